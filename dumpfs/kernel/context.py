"""One dump's kernel, read on demand: its address space, symbols, log and release.

`kernel_context(dump)` gives the same `KernelContext` to every view (processes
will walk tasks through it later).  Each part is computed at most once, on
first use; a part that cannot be computed raises `KernelUnavailable` whose
message says why, and the reason is kept in `problems` (and in the dump's
`meta.problems`, so `info` shows it).
"""

from __future__ import annotations

import threading

from dumpfs.errors import Severity
from dumpfs.model import Dump, MemoryUnavailable


class KernelUnavailable(Exception):
    """A part of the kernel's state cannot be read; the message says why."""


class KernelContext:
    def __init__(self, dump: Dump, system_map=None, vmlinux=None, btf=None):
        self.dump = dump
        self.system_map = system_map
        self.vmlinux = vmlinux
        self.btf = btf
        self.notes: list[str] = []          # how things were found
        self.problems: list[str] = []       # what could not be read, and why
        self._cells: dict[str, object] = {}
        self._lock = threading.RLock()

    def _once(self, key: str, compute, problem: bool = True):
        with self._lock:
            if key not in self._cells:
                try:
                    self._cells[key] = (True, compute())
                except KernelUnavailable as exc:
                    self._cells[key] = (False, str(exc))
                    if problem:
                        self._problem(f"{key}: {exc}")
            ok, value = self._cells[key]
        if not ok:
            raise KernelUnavailable(value)
        return value

    def _problem(self, text: str) -> None:
        self.problems.append(text)
        self.dump.meta.add_problem(text, Severity.WARNING)     # the dump's bytes are all served

    # -- parts ----------------------------------------------------------------
    @property
    def memory(self):
        """The kernel's virtual memory (a KernelMemory)."""
        def compute():
            from dumpfs.kernel.translate import kernel_memory
            try:
                kmem, notes = kernel_memory(self.dump)
            except MemoryUnavailable as exc:
                raise KernelUnavailable(f"no kernel address space: {exc}") from None
            self.notes.extend(notes)
            return kmem
        return self._once("kernel memory", compute)

    @property
    def symbols(self):
        """A SymbolTable from every available source (never fails: VMCOREINFO at least)."""
        def compute():
            from dumpfs.kernel.symbols import kernel_symbols
            try:
                kmem = self.memory
            except KernelUnavailable:
                kmem = None
            table = kernel_symbols(self.dump, kmem, self.system_map, self.vmlinux)
            if not len(table):
                raise KernelUnavailable("no symbols: " + "; ".join(table.problems))
            self.notes.extend(f"symbols: {s}" for s in table.sources)
            self.notes.extend(f"symbols: {p}" for p in table.problems)
            return table
        return self._once("symbols", compute)

    @property
    def log(self):
        """The kernel log (a printk.KernelLog)."""
        def compute():
            from dumpfs.kernel.printk import LogUnavailable, read_kernel_log
            try:
                log = read_kernel_log(self.dump, self.memory)
            except LogUnavailable as exc:
                raise KernelUnavailable(str(exc)) from None
            for problem in log.problems:
                self._problem(f"kernel log: {problem}")
            return log
        return self._once("kernel log", compute)

    @property
    def release(self) -> str:
        """The kernel release: init_uts_ns in memory, else VMCOREINFO's OSRELEASE, else the
        dump header's."""
        def compute():
            from dumpfs.kernel.utsname import read_utsname
            uts = read_utsname(self.dump)
            if uts is not None and uts.release:
                return uts.release
            info = self.dump.vmcoreinfo
            if info is not None and info.get("OSRELEASE"):
                return info.get("OSRELEASE")
            if self.dump.meta.kernel_release:
                return self.dump.meta.kernel_release
            raise KernelUnavailable("no init_uts_ns, no VMCOREINFO OSRELEASE, no release in the header")
        return self._once("kernel release", compute)

    @property
    def types(self):
        """Type layouts (a types.Types): --btf file, else the --vmlinux's DWARF, else the
        kernel's own BTF.  Failing, the message says what processes need."""
        def compute():
            from dumpfs.kernel.types_source import kernel_types
            types, notes, reason = kernel_types(self)
            self.notes.extend(f"types: {n}" for n in notes)
            if types is None:
                self.notes.append(f"processes: {reason}")
                raise KernelUnavailable(reason)
            return types
        return self._once("types", compute, problem=False)

    @property
    def tasks(self):
        """A tasks.TaskWalker over the kernel's task list."""
        def compute():
            from dumpfs.kernel.tasks import TaskWalker, WalkError
            try:
                return TaskWalker(self.memory, self.symbols, self.types)
            except WalkError as exc:
                self.notes.append(f"processes: {exc}")
                raise KernelUnavailable(f"processes cannot be listed: {exc}") from None
        return self._once("tasks", compute, problem=False)


    def processes_status(self) -> str:
        """For `info`: where the task list's types come from, or why there are no processes."""
        try:
            types = self.types
            self.tasks
        except KernelUnavailable as exc:
            return f"unavailable: {exc}"
        return f"from the task list; types: {types.source}"


_contexts_lock = threading.Lock()


def kernel_context(dump: Dump, system_map=None, vmlinux=None, btf=None) -> KernelContext:
    """The dump's KernelContext (created on first call; later arguments are ignored)."""
    with _contexts_lock:
        context = getattr(dump, "_kernel_context", None)
        if context is None:
            context = KernelContext(dump, system_map, vmlinux, btf)
            dump._kernel_context = context
        return context
