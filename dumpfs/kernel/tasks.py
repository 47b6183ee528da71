"""Tasks, read like the kernel's C (drgn's helpers are the model) and found like crash's `ps`.

    for_each_process:   init_task.tasks, a circular list_head of thread-group leaders
    for_each_thread:    leader->signal->thread_head, threads linked by task->thread_node
                        (task->thread_group on kernels without thread_node)
    pid IDR:            init_pid_ns.idr: every struct pid; pid->tasks[PIDTYPE_PID].first is
                        the task's pid_links[PIDTYPE_PID] (pids[PIDTYPE_PID].node before 4.19)
    ppid:               task->real_parent->tgid (as /proc/PID/status shows it)
    state:              task->__state (task->state before 5.14) | task->exit_state

A filtered dump (makedumpfile -d 31) leaves pages out, some inside task_structs
(an all-zero tail is an excluded zero page), so nothing here stops at the first
entry it cannot read: a list whose next pointer cannot be followed is walked
back from its head over the prev pointers until the two walks meet, and the
pid IDR finds the tasks between two unreadable entries.  Tasks are deduplicated
by address.  A task is read member by member (page by page of the members
needed): a member that cannot be read fails only what needs it, and a task
whose pid cannot be read is named, with the reason, in `TaskList.unreadable`.

Dumps can be hostile: every list walk is capped (MAX_TASKS, MAX_THREADS) and
remembers where it has been, so a cycle or a pointer into nowhere ends the
walk with a reason instead of hanging.
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass, field

from dumpfs.errors import MemoryUnavailable, TypeMissing, WalkError
from dumpfs.kernel.address_space import KernelMemory
from dumpfs.kernel.idr import IdrLayout, idr_entries
from dumpfs.kernel.types import Types

MAX_TASKS = 1 << 16
MAX_THREADS = 1 << 14
PF_KTHREAD = 0x00200000
TASK_REPORT = 0x7F
TASK_IDLE = 0x0402              # TASK_UNINTERRUPTIBLE | TASK_NOLOAD
TASK_RTLOCK_WAIT = 0x1000
TASK_STATE_NAMES = ["R (running)", "S (sleeping)", "D (disk sleep)", "T (stopped)",
                    "t (tracing stop)", "X (dead)", "Z (zombie)", "P (parked)", "I (idle)"]
# what is read of every task_struct: Task's name -> (member, struct format without byte order);
# "state" is __state (task->state before 5.14)
TASK_MEMBERS = {"pid": ("pid", "i"), "tgid": ("tgid", "i"), "comm": ("comm", "16s"),
                "flags": ("flags", "I"), "state": ("__state", "I"),
                "exit_state": ("exit_state", "I"),
                "mm": ("mm", "Q"), "real_parent": ("real_parent", "Q"), "cred": ("real_cred", "Q"),
                "signal": ("signal", "Q"), "stack": ("stack", "Q")}
CRED_MEMBERS = ("uid", "euid", "suid", "fsuid", "gid", "egid", "sgid", "fsgid")
# what a Task offers besides its address and pid, each raising WalkError when unreadable
TASK_FIELDS = {
    "tgid": "thread-group id", "comm": "the command name, decoded", "flags": "PF_* flags",
    "state": "__state | exit_state", "mm": "struct mm_struct *",
    "real_parent": "struct task_struct *", "cred": "real_cred: struct cred *",
    "signal": "struct signal_struct *", "stack": "the kernel stack",
    "ppid": "the real parent's tgid", "uids": "real, effective, saved, fs uid",
    "gids": "real, effective, saved, fs gid",
}


class Task:
    """One task_struct, read member by member: a member that could not be read raises
    WalkError (saying why) where it is used; the others are there."""

    def __init__(self, address: int, pid: int, values: dict, missing: dict[str, str]):
        self.address = address
        self.pid = pid
        self.values = values            # member -> value, for those that could be read
        self.missing = missing          # member -> why it could not be read
        self.threads: list[Task] = []   # leaders only, leader first

    def __repr__(self) -> str:
        return f"Task(pid={self.pid}, address={self.address:#x})"

    def value(self, name: str):
        try:
            return self.values[name]
        except KeyError:
            why = self.missing.get(name, "not read")
            raise WalkError(f"pid {self.pid}: {name} unreadable: {why}") from None

    def get(self, name: str, default=None):
        return self.values.get(name, default)

    def __getattr__(self, name: str):
        """task.comm, task.mm, ...: the value of a member of TASK_FIELDS, or WalkError."""
        if name in TASK_FIELDS:
            return self.value(name)
        raise AttributeError(name)

    @property
    def is_kernel_thread(self) -> bool:
        """PF_KTHREAD, or no mm; with neither readable, a user process (whose memory files
        then say why they cannot be read)."""
        if self.get("flags", 0) & PF_KTHREAD:
            return True
        return self.get("mm", 1) == 0

    @property
    def state_text(self) -> str:
        return TASK_STATE_NAMES[task_state_index(self.state)]


@dataclass
class TaskList:
    """One walk: the processes, what could not be read, and how the walk went."""
    processes: list[Task] = field(default_factory=list)    # thread-group leaders, by pid
    unreadable: list[str] = field(default_factory=list)    # one line per task not shown: why
    notes: list[str] = field(default_factory=list)         # lists cut short, how the rest was found

    @property
    def task_count(self) -> int:
        """Tasks shown: the processes and their threads."""
        return sum(len(p.threads) or 1 for p in self.processes)

    @property
    def problems(self) -> list[str]:
        return self.notes + self.unreadable


def task_state_index(state: int) -> int:
    """__task_state_index(): fls() of the reported bits."""
    reported = state & TASK_REPORT
    if state == TASK_IDLE:
        reported = 0x80         # TASK_REPORT_IDLE
    elif state == TASK_RTLOCK_WAIT:
        reported = 0x02
    return min(reported.bit_length(), len(TASK_STATE_NAMES) - 1)


class Offsets:
    """Member offsets of one struct, looked up once; absent optional members are None."""

    def __init__(self, types: Types, struct_name: str, required=(), optional=()):
        self.size = types.sizeof(struct_name)
        self.offsets: dict[str, int | None] = {}
        for path in required:
            self.offsets[path] = types.offsetof(struct_name, path)
        for path in optional:
            try:
                self.offsets[path] = types.offsetof(struct_name, path)
            except TypeMissing:
                self.offsets[path] = None
        for path, value in self.offsets.items():
            if not path.startswith("_"):
                setattr(self, path.replace(".", "_"), value)

    def __getitem__(self, path: str) -> int | None:
        return self.offsets[path]


class Members:
    """Chosen members of one struct, read in one pass over the pages they span but each on
    its own: a member on a page that cannot be read is missing, with the reason."""

    def __init__(self, prefix: str, members: dict[str, tuple[int, str]]):
        self.layouts = [(name, offset, struct.Struct(prefix + fmt))
                        for name, (offset, fmt) in members.items()]
        self.start = min(offset for _, offset, _ in self.layouts)
        self.end = max(offset + layout.size for _, offset, layout in self.layouts)

    def read(self, kmem: KernelMemory, address: int) -> tuple[dict, dict[str, str]]:
        """(member -> value, member -> why it cannot be read) of the struct at `address`."""
        data, holes = kmem.read_with_holes(address + self.start, self.end - self.start)
        if not holes:
            return {name: layout.unpack_from(data, offset - self.start)[0]
                    for name, offset, layout in self.layouts}, {}
        values, missing = {}, {}
        for name, offset, layout in self.layouts:
            at = offset - self.start
            why = next((why for start, length, why in holes
                        if start < at + layout.size and at < start + length), None)
            if why is None:
                values[name] = layout.unpack_from(data, at)[0]
            else:
                missing[name] = why
        return values, missing


class TaskWalker:
    """Reads tasks of one kernel: `processes()` lists thread-group leaders with their threads."""

    def __init__(self, kmem: KernelMemory, symbols, types: Types):
        self.kmem = kmem
        self.arch = kmem.dump.arch.kernel
        self.types = types
        self.prefix = kmem.prefix
        self.init_task = symbols.address("init_task")
        if self.init_task is None:
            raise WalkError(f"no symbol init_task (the task list starts there): "
                            f"{symbols.why_absent('init_task')}; "
                            "pass --system-map or --vmlinux")
        try:
            self.t = Offsets(types, "task_struct",
                             ("tasks", "pid", "tgid", "comm", "real_parent", "mm", "flags",
                              "real_cred", "signal", "stack"),
                             ("__state", "state", "exit_state", "thread_node", "thread_group"))
            self.cred = Offsets(types, "cred", ("uid", "gid", "suid", "sgid", "euid", "egid",
                                                "fsuid", "fsgid"))
            self.sig = Offsets(types, "signal_struct", (), ("thread_head",))
        except TypeMissing as exc:
            raise WalkError(f"type information lacks what tasks need: {exc}") from None
        if self.t["__state"] is None and self.t.state is None:
            raise WalkError("task_struct has neither __state nor state")
        members = dict(TASK_MEMBERS)
        if self.t["__state"] is None:
            members["state"] = ("state", "Q")
        layouts = {name: (self.t[member], fmt) for name, (member, fmt) in members.items()
                   if self.t[member] is not None}
        # the task's own node of its thread list: a list of one tells without reading more
        self._thread_link = self.t.thread_node if self.t.thread_node is not None else \
            self.t.thread_group
        if self._thread_link is not None:
            layouts["thread_next"] = (self._thread_link, "Q")
            layouts["thread_prev"] = (self._thread_link + 8, "Q")
        self._task_members = Members(self.prefix, layouts)
        self._cred_members = Members(self.prefix, {name: (self.cred[name], "I")
                                                   for name in CRED_MEMBERS})
        self.init_pid_ns = symbols.address("init_pid_ns")
        self._prev = (types.offsetof("list_head", "prev")
                      if types.has_member("list_head", "prev") else 8)
        self.problems: list[str] = []      # of the last complete walk, and threads since
        self._problems_lock = threading.Lock()
        self._parents: dict[int, int] = {}

    # -- one task -----------------------------------------------------------
    def read_task(self, address: int) -> Task:
        """The task_struct at `address`, member by member; raises WalkError when even its pid
        cannot be read."""
        values, missing = self._task_members.read(self.kmem, address)
        if "pid" in missing:
            raise WalkError(f"task_struct at {address:#x} unreadable: {missing['pid']}")
        exit_state = values.pop("exit_state", 0)
        if "exit_state" in missing:
            missing["state"] = missing.pop("exit_state")
            values.pop("state", None)
        elif "state" in values:
            values["state"] = (values["state"] | exit_state) & 0xFFFFFFFF
        if "comm" in values:
            values["comm"] = values["comm"].split(b"\0", 1)[0].decode("utf-8", "replace")
        return Task(address, values.pop("pid"), values, missing)

    def _fill(self, task: Task, known: dict[int, Task] | None = None) -> Task:
        """ppid (the real parent's tgid) and credentials, each missing with the reason when
        it cannot be read."""
        parent = task.get("real_parent")
        if parent is None:
            task.missing["ppid"] = f"real_parent: {task.missing.get('real_parent')}"
        elif not parent or parent == task.address:
            task.values["ppid"] = 0
        elif known and parent in known and "tgid" in known[parent].values:
            task.values["ppid"] = known[parent].values["tgid"]
        else:
            if parent not in self._parents:
                try:
                    self._parents[parent] = self.kmem.read_s32(parent + self.t.tgid)
                except MemoryUnavailable as exc:
                    self._parents[parent] = f"real_parent's tgid: {exc}"
            ppid = self._parents[parent]
            if isinstance(ppid, str):
                task.missing["ppid"] = ppid
            else:
                task.values["ppid"] = ppid
        cred = task.get("cred")
        why = None
        if cred is None:
            why = f"cred: {task.missing.get('cred')}"
        elif not cred:
            task.values["uids"] = task.values["gids"] = (0, 0, 0, 0)
        else:
            ids, missing = self._cred_members.read(self.kmem, cred)
            if missing:
                why = f"cred at {cred:#x}: {next(iter(missing.values()))}"
            else:
                task.values["uids"] = (ids["uid"], ids["euid"], ids["suid"], ids["fsuid"])
                task.values["gids"] = (ids["gid"], ids["egid"], ids["sgid"], ids["fsgid"])
        if why is not None:
            task.missing["uids"] = task.missing["gids"] = why
        return task

    # -- lists ----------------------------------------------------------------
    def _follow(self, head: int, pointer: int, limit: int, seen: set[int],
                meet: frozenset[int] = frozenset(), visit=None) -> tuple[list[int], str | None]:
        """Nodes from `head` over the pointer at offset `pointer` (next or prev); the second
        value says why the walk stopped early (None: back at the head, or at a node of `meet`).
        `visit(node)` is called on each node as it is reached, while its page is cached."""
        out: list[int] = []
        node = head
        while True:
            try:
                following = self.kmem.read_pointer(node + pointer)
            except MemoryUnavailable as exc:
                where = "the list head" if node == head else f"entry {len(out)} ({node:#x})"
                return out, f"{where} unreadable: {exc}"
            if following == head or following in meet:
                return out, None
            if following in seen:
                return out, f"the list loops back to {following:#x} after {len(out)} entries"
            if not following:
                return out, f"NULL pointer after {len(out)} entries"
            if len(out) >= limit:
                return out, f"more than {limit} entries (the list is damaged or absurd)"
            seen.add(following)
            out.append(following)
            if visit is not None:
                visit(following)
            node = following

    def _ring(self, head: int, member_offset: int, limit: int,
              what: str, visit=None) -> tuple[list[int], list[str]]:
        """Container addresses on the circular list at `head`, in list order: forwards from the
        head, and where that stops early, backwards from the head until the walks meet.
        The second value says what stopped the walks (empty: the list was whole).
        `visit(container)` is called on each as it is reached (see `_follow`)."""
        seen = {head}
        at = None if visit is None else (lambda node: visit(node - member_offset))
        forward, cut = self._follow(head, 0, limit, seen, visit=at)
        if cut is None:
            return [node - member_offset for node in forward], []
        backward, back_cut = self._follow(head, self._prev, limit - len(forward), seen,
                                          frozenset(forward), visit=at)
        nodes = forward + backward[::-1]
        if back_cut is None:
            notes = [f"{what}: {cut}; the rest found walking back from the head"]
        else:
            notes = [f"{what}: {cut}; walking back from the head: {back_cut}"]
        return [node - member_offset for node in nodes], notes

    def pid_idr_tasks(self) -> tuple[list[tuple[int, int]], list[tuple[int, str]], list[str]]:
        """(pid, task_struct address) of every struct pid in init_pid_ns.idr with a task, as
        crash's `ps` finds them; pids whose struct pid cannot be read, with why; problems."""
        what = "pid IDR (init_pid_ns.idr)"
        if self.init_pid_ns is None:
            return [], [], [f"{what}: not searched: no symbol init_pid_ns"]
        types = self.types
        try:
            layout = IdrLayout(types)
            idr = self.init_pid_ns + types.offsetof("pid_namespace", "idr")
            pid_tasks = types.offsetof("pid", "tasks")          # tasks[PIDTYPE_PID = 0]
            if types.has_member("task_struct", "pid_links"):
                links = types.offsetof("task_struct", "pid_links")
            else:                                               # before 4.19: pids[].node
                links = types.offsetof("task_struct", "pids") + types.offsetof("pid_link", "node")
        except (TypeMissing, WalkError) as exc:
            return [], [], [f"{what}: not searched: {exc}"]
        entries, problems = idr_entries(self.kmem, layout, idr, MAX_TASKS, what)
        tasks, lost = [], []
        for pid, entry in entries:
            try:
                first = self.kmem.read_pointer(entry + pid_tasks)
            except MemoryUnavailable as exc:
                lost.append((pid, f"pid {pid} (in the pid IDR): struct pid at {entry:#x} "
                                   f"unreadable: {exc}"))
                continue
            if first:
                tasks.append((pid, first - links))
        return tasks, lost, problems

    # -- walks ----------------------------------------------------------------
    def walk(self) -> TaskList:
        """Every thread-group leader (init_task itself, pid 0, aside), by pid, with its threads:
        the task list and thread lists, each walked both ways; where a walk was cut short or
        a task could not be read, the pid IDR too.  Tasks are deduplicated by address."""
        found = TaskList()
        tasks: dict[int, Task] = {}
        failed: dict[int, tuple[list[str], WalkError]] = {}     # address -> (found where, why)
        idr_pids: dict[int, int] = {}                           # address -> pid, from the IDR

        def read(address: int, where: str) -> Task | None:
            if address in tasks:
                return tasks[address]
            if address in failed:
                failed[address][0].append(where)
                return None
            try:
                task = self.read_task(address)
            except WalkError as exc:
                failed[address] = ([where], exc)
                return None
            tasks[address] = task
            return task

        # each task is read as the list reaches it: the page holding its list node is
        # then still in the page cache (a walk first, reads after, would fetch it twice)
        addresses, notes = self._ring(self.init_task + self.t.tasks, self.t.tasks, MAX_TASKS,
                                      "task list (init_task.tasks)",
                                      visit=lambda address: read(address, "the task list"))
        found.notes += notes
        leaders: dict[int, Task] = {}
        for address in addresses:
            task = read(address, "the task list")
            if task is not None and task.pid > 0:
                leaders[address] = task
        for leader in leaders.values():
            leader.threads = self._threads(leader, read, found.notes)
        lost: list[tuple[int, str]] = []
        if found.notes or failed:
            lost = self._search_idr(found, leaders, read, idr_pids)
        for task in tasks.values():
            self._fill(task, tasks)
        by_pid: dict[int, Task] = {}
        for leader in sorted(leaders.values(), key=lambda task: task.pid):
            if leader.pid in by_pid:
                found.notes.append(f"pid {leader.pid} twice: task_structs at "
                                   f"{by_pid[leader.pid].address:#x} and {leader.address:#x}")
                continue
            by_pid[leader.pid] = leader
        found.processes = list(by_pid.values())
        shown = {task.pid for leader in found.processes for task in leader.threads}
        for address, (where, exc) in failed.items():
            who = f"pid {idr_pids[address]}" if address in idr_pids else "a task"
            found.unreadable.append(f"{who} (on {' and in '.join(where)}): {exc}")
        found.unreadable += [text for pid, text in lost if pid not in shown]
        return found

    def _search_idr(self, found: TaskList, leaders: dict[int, Task], read,
                    idr_pids: dict[int, int]) -> list[tuple[int, str]]:
        """Add the tasks of the pid IDR the lists did not reach: leaders (with their threads)
        to `leaders`, threads to their leader's; `idr_pids` gets every task's pid.  Returns the
        pids whose struct pid could not be read, with why."""
        idr_tasks, lost, problems = self.pid_idr_tasks()
        found.notes += problems
        known = {task.address for leader in leaders.values() for task in leader.threads}
        only_in_idr: list[int] = []
        threads: dict[int, list[Task]] = {}
        for pid, address in idr_tasks:
            idr_pids[address] = pid
            if address in known:
                continue
            task = read(address, "the pid IDR")
            if task is None or task.pid <= 0:
                continue
            known.add(address)
            if task.get("tgid", task.pid) != task.pid:
                threads.setdefault(task.tgid, []).append(task)
                continue
            leaders[address] = task
            only_in_idr.append(pid)
            task.threads = self._threads(task, read, found.notes)
            known.update(thread.address for thread in task.threads)
        if only_in_idr:
            found.notes.append(f"{len(only_in_idr)} processes found only in the pid IDR: "
                               + " ".join(map(str, sorted(only_in_idr)[:20]))
                               + (" ..." if len(only_in_idr) > 20 else ""))
        groups = {leader.pid: leader for leader in leaders.values()}
        for tgid, members in threads.items():
            leader = groups.get(tgid)
            if leader is None:
                found.notes.append(f"threads {' '.join(str(t.pid) for t in members)} of tgid "
                                   f"{tgid}, whose leader cannot be read, are not shown")
                continue
            others = {task.address: task for task in leader.threads[1:] + members}
            leader.threads = [leader] + sorted(others.values(), key=lambda task: task.pid)
        return lost

    def _threads(self, leader: Task, read, notes: list[str]) -> list[Task]:
        """The leader first, then the other threads of its group by pid, from its thread
        list (walked both ways)."""
        t = self.t
        what = f"threads of pid {leader.pid}"
        addresses: list[int] = []
        if self._alone(leader):
            return [leader]
        if t.thread_node is not None and self.sig.thread_head is not None:
            signal = leader.get("signal")
            if signal:
                addresses, cut = self._ring(signal + self.sig.thread_head, t.thread_node,
                                            MAX_THREADS, what)
                notes += cut
            elif signal is None:
                notes.append(f"{what}: signal unreadable: {leader.missing.get('signal')}")
        elif t.thread_group is not None:
            addresses, cut = self._ring(leader.address + t.thread_group, t.thread_group,
                                        MAX_THREADS, what)
            notes += cut
        others: dict[int, Task] = {}
        for address in addresses:
            if address != leader.address and address not in others:
                task = read(address, f"the threads of pid {leader.pid}")
                if task is not None:
                    others[address] = task
        return [leader] + sorted(others.values(), key=lambda task: task.pid)

    def _alone(self, leader: Task) -> bool:
        """The leader is its group's only thread: its own node of the thread list (read with
        the task) points both ways at the list's head (signal->thread_head), or at itself
        (thread_group, before thread_node)."""
        following, previous = leader.get("thread_next"), leader.get("thread_prev")
        if following is None or following != previous:
            return False
        if self.t.thread_node is not None:
            if self.sig.thread_head is None:
                return False
            signal = leader.get("signal")
            return bool(signal) and following == signal + self.sig.thread_head
        return following == leader.address + self._thread_link

    def threads_of(self, leader: Task) -> list[Task]:
        """The leader first, then the other threads of its group (as the last walk found them,
        else walked now)."""
        if leader.threads:
            return leader.threads
        notes: list[str] = []

        def read(address: int, where: str) -> Task | None:
            try:
                return self._fill(self.read_task(address))
            except WalkError as exc:
                notes.append(f"{where}: {exc}")
                return None
        leader.threads = self._threads(leader, read, notes)
        for note in notes:
            self._note(note)
        return leader.threads

    def _note(self, problem: str) -> None:
        with self._problems_lock:
            self.problems.append(problem)

    def processes(self) -> list[Task]:
        """Every thread-group leader, by pid, with its threads (`walk()`'s processes).

        `problems` becomes this walk's, whole: walks in other threads never mix into it."""
        found = self.walk()
        with self._problems_lock:
            self.problems = found.problems
        return found.processes

    # -- registers ---------------------------------------------------------------
    def pt_regs(self, task: Task) -> bytes:
        """The user registers saved at the top of the task's kernel stack (task_pt_regs)."""
        size = self.types.sizeof("pt_regs")
        if not task.stack:
            raise WalkError(f"pid {task.pid} has no kernel stack")
        address = task.stack + self.arch.thread_size - size
        try:
            return self.kmem.read(address, size)
        except MemoryUnavailable as exc:
            raise WalkError(f"pid {task.pid}: pt_regs at {address:#x} unreadable: {exc}") from None

    def user_registers(self, task: Task) -> bytes:
        """pr_reg of the task's NT_PRSTATUS (the machine's user_regs_struct), from its pt_regs."""
        return self.arch.user_registers(self.pt_regs(task), task.address, self.kmem, self.types)
