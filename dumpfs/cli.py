"""The `dumpfs` command: mount, umount, info, convert.

Every failure is one line `dumpfs: <what is wrong>` on stderr and an exit
code from EXIT_CODES; a traceback only with --debug.  Dumps are opened
before `mount` daemonises, so a bad dump is reported on the terminal.
"""

from __future__ import annotations

import argparse
import errno
import functools
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import urllib.parse

from dumpfs.cmdline import redact_own_command_line
from dumpfs.errors import BadFile, DumpError, DumpfsError, MemoryUnavailable, Unavailable
from dumpfs.url import is_url, redact

OK, BAD_INPUT, USAGE, MOUNT_FAILED, OUTPUT_FAILED, INTERNAL, INTERRUPTED = 0, 1, 2, 3, 4, 70, 130

EXIT_CODES = f"""\
exit codes:
  {OK}    success
  {BAD_INPUT}    a source is missing, unreadable or not a usable dump
  {USAGE}    bad command line
  {MOUNT_FAILED}    mounting or unmounting failed (mountpoint missing, busy, no FUSE)
  {OUTPUT_FAILED}    convert: the output cannot be written
  {INTERNAL}   internal error (a bug: please report it with the --debug output)
  {INTERRUPTED}  interrupted (Ctrl-C)
"""

DESCRIPTION = """\
Mount Linux kernel dumps as a lazy read-only file tree, or inspect and
convert them.  Sources: ELF vmcores, kdump-compressed and flattened files,
and IBM Z dumps (DASD single and multi-volume, tape, VMDUMP, SCSI/zfcpdump,
NGDump, LKCD), detected by content.

A mounted dump shows:
  vmcore               the dump as a /proc/vmcore-style ELF core (crash, gdb, drgn)
  info, info.json      what the dump is: format, kernel, CPUs, memory, damage
  vmcoreinfo           the kernel's VMCOREINFO text (when the dump has it)
  cpus/<n>/registers   `name value` lines; cpus/<n>/notes/<TYPE> raw note payloads
  memory/<start>-<end> physical memory ranges; memory/map lists every chunk
  kernel/              log (as dmesg), release, symbols, sources
  proc/<pid>/          comm, cmdline, environ, status, maps, mem, core, regions/, task/
  dump.s390            (s390x) the dump in the s390 stand-alone format
"""

EXAMPLES = """\
examples:
  dumpfs mount /var/crash/vmcore /mnt/dump      mount in the background
  dumpfs mount -f --debug vmcore /mnt/dump      stay in the foreground, log requests
  dumpfs mount a.kdump b.elf /mnt/dumps         one subfolder per dump: a.kdump/ b.elf/
  dumpfs mount /var/crash /mnt/crash            one subfolder per dump there, kept up to date
  dumpfs mount https://host/vmcore.xz /mnt/dump a remote dump (also s3://bucket/key), by range
  dumpfs mount -o allow_other vmcore /mnt/dump  let other users read it
  dumpfs umount /mnt/dump
  dumpfs info dump.kdump                        what is in the dump
  dumpfs info --json dump.kdump | jq .memory
  dumpfs convert dump.kdump vmcore.elf          kdump -> ELF, readable by any tool
  dumpfs convert dump.kdump - | gzip > vmcore.elf.gz
"""

log = logging.getLogger("dumpfs")

# The exit code of each kind of error in dumpfs.errors (README: 1 is bad input); the first
# class an error is an instance of decides.
ERROR_EXITS: tuple[tuple[type[DumpfsError], int], ...] = (
    (DumpError, BAD_INPUT),         # no dump, a damaged dump, a missing part, an unsupported kind
    (BadFile, BAD_INPUT),           # a vmlinux, System.map or BTF file that cannot be used
    (Unavailable, BAD_INPUT),       # a piece of the dump cannot be read (convert, info)
)


class Failure(Exception):
    """An error for people, with the exit code it ends the command with."""

    def __init__(self, message: str, code: int = BAD_INPUT):
        super().__init__(message)
        self.code = code


def _say(message: str) -> None:
    print(f"dumpfs: {message}", file=sys.stderr, flush=True)


def _oserror_text(exc: OSError) -> str:
    text = exc.strerror or str(exc)
    return f"{exc.filename}: {text}" if exc.filename else text


def _open_all(paths: list[str], partial: bool = False) -> list:
    """Several sources; the volumes of one multi-volume dump become one dump."""
    from dumpfs.backends import open_paths
    return open_paths(paths, partial=partial)


# -- mount -------------------------------------------------------------

def _check_mountpoint(path: str) -> str:
    """The mountpoint as an absolute path; a dead dumpfs mount left there (its daemon was
    killed) is detached first, anything else mounted there is refused."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise Failure(f"{path}: mountpoint does not exist (mkdir it first)", MOUNT_FAILED) from None
    except OSError as exc:
        if exc.errno != errno.ENOTCONN:
            raise Failure(f"{path}: mountpoint: {exc.strerror}", MOUNT_FAILED) from None
        if _mounted_at(path) != DUMPFS_FSTYPE:
            raise Failure(f"{path}: a dead FUSE mount of another file system is there "
                          f"(fusermount3 -uz {path} first)", MOUNT_FAILED) from None
        _unmount(path, lazy=True)
        log.debug("%s: detached the dead dumpfs mount left there", path)
        return _check_mountpoint(path)
    if not stat.S_ISDIR(st.st_mode):
        raise Failure(f"{path}: mountpoint is not a directory", MOUNT_FAILED)
    if os.path.ismount(path):
        raise Failure(f"{path}: something is already mounted there "
                      f"(dumpfs umount {path} first)", MOUNT_FAILED)
    return os.path.abspath(path)


# -o options dumpfs handles itself (libfuse's low-level API has no uid/gid/umask;
# zero_excluded is crash's name for reading the pages a dump lacks as zeros)
OWN_OPTIONS = ("direct_io", "zero_excluded", "uid", "gid", "umask")
FLAG_OPTIONS = ("direct_io", "zero_excluded")


def _mount_options(groups: list[str]) -> tuple[list[str], dict[str, object]]:
    """(options for libfuse, dumpfs' own: direct_io, zero_excluded, uid, gid, umask) from
    the -o arguments."""
    fuse_options, own = [], {}
    for option in (o.strip() for group in groups for o in group.split(",")):
        key, _, value = option.partition("=")
        if not option or key not in OWN_OPTIONS:
            if option:
                fuse_options.append(option)
            continue
        if key in FLAG_OPTIONS:
            if value:
                raise Failure(f"-o {key} takes no value", USAGE)
            own[key] = True
        elif not value:
            raise Failure(f"-o {key} needs a value ({key}=...)", USAGE)
        elif key == "umask":
            try:
                own[key] = int(value, 8) & 0o777
            except ValueError:
                raise Failure(f"-o umask={value}: not an octal mode such as 022", USAGE) from None
        else:
            own[key] = _user_or_group_id(key, value)
    return fuse_options, own


def _user_or_group_id(key: str, value: str) -> int:
    import grp
    import pwd
    if value.isdigit():
        return int(value)
    try:
        return pwd.getpwnam(value).pw_uid if key == "uid" else grp.getgrnam(value).gr_gid
    except KeyError:
        raise Failure(f"-o {key}={value}: no such {'user' if key == 'uid' else 'group'}",
                      USAGE) from None


def _dump_access(dump, own: dict):
    """Who may read a dump's tree: the Access of the files it is read from (all volumes of a
    multi-volume dump; the compressed file of a compressed one)."""
    from dumpfs.source import FileSource
    paths = []
    for source in dump.resources:
        while getattr(source, "inner", None) is not None:      # compression, a partition
            source = source.inner
        if isinstance(source, FileSource):
            paths.append(source.name)
    return _access_of(paths or dump.sources, own)


def _access_of(paths, own: dict):
    """Who may read what comes from `paths`: their owner and group and the read bits all of
    them grant, unless -o uid=/gid=/umask= say otherwise.  A path that cannot be stat-ed (not
    a local file: a URL) makes it owner-only."""
    from dumpfs.tree import Access
    stats = []
    for name in paths:
        try:
            stats.append(os.stat(name))
        except (OSError, ValueError):
            stats = []
            break
    read_bits = 0o400
    if "umask" in own:
        read_bits = 0o444 & ~own["umask"]
    elif stats:
        read_bits = 0o444
        for st in stats:
            read_bits &= st.st_mode
    uid = own.get("uid", stats[0].st_uid if stats else os.getuid())
    gid = own.get("gid", stats[0].st_gid if stats else os.getgid())
    return Access(uid, gid, read_bits)


def _shown(source: str) -> str:
    """A source as findmnt and logs show it: a local path made absolute, a URL redacted."""
    return redact(source) if is_url(source) else os.path.abspath(source)


def _fsname(paths: list[str]) -> str:
    """What findmnt and df show as the source: the dump (libfuse splits options at commas)."""
    name = paths[0] if paths else "dumpfs"
    if len(paths) > 1:
        name += f" (+{len(paths) - 1} more)"
    name = name.encode("ascii", "replace").decode().replace("\\", "\\\\").replace(",", "\\,")
    return "fsname=" + name


def _unique_names(paths: list[str]) -> list[str]:
    """Subfolder names for a multi-dump mount: basenames, `-2`, `-3`... on a clash."""
    from dumpfs.tree import unique_names
    return unique_names(os.path.basename(os.path.normpath(
        (urllib.parse.urlsplit(path).path or "dump") if is_url(path) else path)) or "dump"
        for path in paths)


def _build_root(dumps: list, contexts: list, paths: list[str], own: dict | None = None):
    """One dump's tree, or a folder of them; each with its source's Access.  The top folder
    of several dumps lists only their names: it is readable by all, unless -o umask says not."""
    from dumpfs.tree import Access, Dir
    from dumpfs.views import build_tree
    own = own or {}
    zero_holes = bool(own.get("zero_excluded"))
    if len(dumps) == 1:
        root = build_tree(dumps[0], contexts[0], zero_holes=zero_holes)
        root.access = _dump_access(dumps[0], own)
        return root
    folders = []
    for dump, context, name in zip(dumps, contexts, _unique_names(paths)):
        folder = build_tree(dump, context, name, zero_holes=zero_holes)
        folder.access = _dump_access(dump, own)
        folders.append(folder)
    return Dir("", folders, access=Access(own.get("uid", os.getuid()), own.get("gid", os.getgid()),
                                          0o444 & ~own.get("umask", 0)))


def _dump_directory(args) -> str | None:
    """The directory of dumps among the sources (it must be the only one), or None."""
    directories = [path for path in args.sources if os.path.isdir(path)]
    if not directories:
        return None
    if len(args.sources) > 1:
        raise Failure(f"{directories[0]}: a dump directory is mounted on its own, not with "
                      f"other sources", USAGE)
    if args.btf is not None:
        raise Failure("--btf cannot be checked against a dump, so it is not applied to the "
                      "dumps of a directory (--vmlinux is, where its build id matches)", USAGE)
    try:
        os.scandir(directories[0]).close()
    except OSError as exc:
        raise Failure(_oserror_text(exc)) from None
    return os.path.abspath(directories[0])


def _dump_dir_root(path: str, args, own: dict):
    """A directory's dumps as one folder each (dumpfs.dumpdir), opened when first listed;
    each folder has the Access of its own files, the top the directory's."""
    from dumpfs.dumpdir import DumpDir
    from dumpfs.errors import Unsupported
    from dumpfs.views import build_tree

    def show(found):
        dumps = _open_all([found.location], args.partial)
        if len(dumps) != 1:
            for dump in dumps:
                dump.close()
            raise Unsupported(f"{_shown(found.location)}: holds {len(dumps)} dumps, not one")
        try:
            return dumps[0], build_tree(dumps[0], _fitting_context(dumps[0], args),
                                        zero_holes=bool(own.get("zero_excluded")))
        except BaseException:
            dumps[0].close()
            raise

    return DumpDir(path, show, lambda found: _access_of(found.paths, own),
                   access=_access_of([path], own))


def _fitting_context(dump, args):
    """A dump of a directory gets --vmlinux and --system-map where they fit it (build id,
    symbol addresses); elsewhere they are left out and its info says why."""
    from dumpfs.kernel.context import KernelContext
    from dumpfs.kernel.given_files import check_system_map, check_vmlinux
    files = {}
    for option, check in (("vmlinux", check_vmlinux), ("system_map", check_system_map)):
        path = getattr(args, option)
        if path is None:
            continue
        try:
            check(dump, path)
            files[option] = path
        except BadFile as exc:
            dump.meta.details["--" + option.replace("_", "-")] = str(exc)
    return KernelContext(dump, **files)


def _given_file(path: str) -> str:
    """A file named on the command line, as an absolute path: the mount daemon changes its
    directory to /, so a relative path must be resolved before it starts."""
    if not os.path.isfile(path):
        raise argparse.ArgumentTypeError(f"{path}: file not found")
    return os.path.abspath(path)


def _symbol_source_options(parser) -> None:
    parser.add_argument("--vmlinux", metavar="FILE", type=_given_file,
                        help="the dumped kernel's vmlinux: symbols and types for proc/ "
                             "(its .BTF, else its DWARF)")
    parser.add_argument("--system-map", metavar="FILE", type=_given_file,
                        help="the dumped kernel's System.map: symbols")
    parser.add_argument("--btf", metavar="FILE", type=_given_file,
                        help="BTF of the dumped kernel (/sys/kernel/btf/vmlinux): types for proc/")


def _kernel_contexts(dumps: list, args) -> list:
    """Each dump's KernelContext, with the --vmlinux / --system-map / --btf files."""
    from dumpfs.kernel.context import KernelContext
    from dumpfs.kernel.given_files import check_system_map, check_vmlinux
    for dump in dumps:
        if args.vmlinux is not None:
            check_vmlinux(dump, args.vmlinux)
        if args.system_map is not None:
            check_system_map(dump, args.system_map)
    return [KernelContext(dump, system_map=args.system_map, vmlinux=args.vmlinux, btf=args.btf)
            for dump in dumps]


def cmd_mount(args) -> int:
    options, own = _mount_options(args.options)
    direct_io = bool(own.get("direct_io"))  # ours, not libfuse's: bypass the page cache
    directory = _dump_directory(args)
    if directory is not None:
        mountpoint = _check_mountpoint(args.mountpoint)
        root = _dump_dir_root(directory, args, own)
    else:
        dumps = _open_all(args.sources, args.partial)
        mountpoint = _check_mountpoint(args.mountpoint)
        contexts = _kernel_contexts(dumps, args)
        root = _build_root(dumps, contexts, [d.sources[0] if d.sources else "dump" for d in dumps],
                           own)
    shown = [_shown(p) for p in args.sources]
    options.append(_fsname(shown))

    from dumpfs import fuse
    if args.foreground:
        try:
            ops = fuse.mount(root, mountpoint, options, direct_io=direct_io)
        except fuse.MountError as exc:
            raise Failure(f"{mountpoint}: cannot mount: {exc}", MOUNT_FAILED) from None
        log.debug("mounted %s on %s", ", ".join(shown), mountpoint)
        _notify_systemd(f"READY=1\nSTATUS=serving {', '.join(shown)} on {mountpoint}")
        fuse.serve(ops)
        return OK

    # Daemonise: the child mounts and reports through a pipe, so that the parent
    # exits only when the mount is usable (scripts may `ls` it at once).
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            report = pipe.read().decode(errors="replace")
        if report == "ok":
            return OK
        os.waitpid(pid, 0)
        raise Failure(report or f"{mountpoint}: the mount process died before mounting",
                      MOUNT_FAILED)

    os.close(read_end)
    code = OK
    try:
        os.setsid()
        try:
            ops = fuse.mount(root, mountpoint, options, direct_io=direct_io)
        except fuse.MountError as exc:
            os.write(write_end, f"{mountpoint}: cannot mount: {exc}".encode())
            os._exit(MOUNT_FAILED)
        except BaseException as exc:    # noqa: BLE001 - the parent must hear about it
            os.write(write_end, f"{mountpoint}: cannot mount: {exc}".encode())
            os._exit(MOUNT_FAILED)
        os.chdir("/")
        _detach_stdio()
        os.write(write_end, b"ok")
        os.close(write_end)
        fuse.serve(ops)
    except BaseException:               # noqa: BLE001 - nobody is left to read a traceback
        log.exception("dumpfs daemon for %s failed", mountpoint)
        code = INTERNAL
    finally:
        os._exit(code)


def _notify_systemd(state: str) -> None:
    """sd_notify(3) for a Type=notify unit: tell systemd the tree is mounted, so units
    ordered after this one find files there.  Nothing happens outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    import socket
    if address.startswith("@"):
        address = "\0" + address[1:]       # abstract socket namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("cannot notify systemd (%s): %s", address, exc)


def _detach_stdio() -> None:
    """Daemon: stdio to /dev/null, warnings to syslog (when there is one)."""
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    if os.path.exists("/dev/log"):
        from logging.handlers import SysLogHandler
        handler = SysLogHandler("/dev/log")
        handler.setFormatter(logging.Formatter("dumpfs[%(process)d]: %(message)s"))
        root.addHandler(handler)


# -- umount ------------------------------------------------------------

DUMPFS_FSTYPE = "fuse.dumpfs"


def _mounted_at(path: str) -> str | None:
    """The filesystem type mounted exactly at `path` (the newest), from /proc/self/mounts."""
    target = os.path.abspath(path)
    found = None
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 2 and fields[1].replace("\\040", " ") == target:
                found = fields[2]
    return found


def _unmount(path: str, lazy: bool = False) -> None:
    """fusermount3 -u (-z: detach even if busy or dead), else umount (-l)."""
    errors = []
    for command in (["fusermount3", "-uz" if lazy else "-u", path],
                    ["fusermount", "-uz" if lazy else "-u", path],
                    ["umount", "-l", path] if lazy else ["umount", path]):
        if shutil.which(command[0]) is None:
            continue
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode == 0:
            return
        errors.append(done.stderr.strip().splitlines()[-1] if done.stderr.strip()
                      else f"{command[0]} failed")
    raise Failure(f"{path}: cannot unmount: {errors[-1] if errors else 'no fusermount3 or umount'}",
                  MOUNT_FAILED)


def cmd_umount(args) -> int:
    path = args.mountpoint
    fstype = _mounted_at(path)
    if fstype is None:
        raise Failure(f"{path}: not mounted", MOUNT_FAILED)
    if fstype != DUMPFS_FSTYPE:
        raise Failure(f"{path}: not a dumpfs mount ({fstype}); not unmounting it", MOUNT_FAILED)
    _unmount(path, lazy=args.lazy)
    return OK


# -- info --------------------------------------------------------------

def cmd_info(args) -> int:
    from dumpfs.views.info import info_json, info_text
    directory = _dump_directory(args)
    if directory is not None:
        return _info_of_directory(directory, args)
    dumps = _open_all(args.sources, args.partial)
    try:
        contexts = _kernel_contexts(dumps, args)
        texts = []
        for dump, context in zip(dumps, contexts):
            if args.json:
                texts.append(json.dumps(info_json(dump, context), indent=2, default=str) + "\n")
            else:
                text = info_text(dump, context)
                texts.append(text + ("" if text.endswith("\n") else "\n"))
        sys.stdout.write("\n".join(texts))
        sys.stdout.flush()
    finally:
        for dump in dumps:
            dump.close()
    return OK


def _info_of_directory(path: str, args) -> int:
    """What mounting the directory would show: per dump found, its folder's name and `info`
    (format, container, ...) or its one-line error.  Exit 1 if no dump is found or one
    of them cannot be shown."""
    root = _dump_dir_root(path, args, {})
    folders = list(root.children.values())
    blocks, failed = [], []
    try:
        for folder in folders:
            info = folder.children.get("info.json" if args.json else "info")
            text = info.read(0, info.size).decode(errors="replace") if info else ""
            if folder.error is not None:
                failed.append(folder.name)
            if args.json:
                blocks.append({"name": folder.name, "entry": folder.found.entry,
                               **({"error": folder.error} if folder.error is not None
                                  else {"info": json.loads(text)})})
            else:
                blocks.append(f"== {folder.name} ==\n" + (f"error..............: {folder.error}\n"
                                                          if folder.error is not None else text))
        if args.json:
            sys.stdout.write(json.dumps(blocks, indent=2, default=str) + "\n")
        else:
            sys.stdout.write("\n".join(block if block.endswith("\n") else block + "\n"
                                       for block in blocks))
        sys.stdout.flush()
    finally:
        for folder in folders:
            folder.close()
    if not folders:
        raise Failure(f"{path}: no dump found in this directory")
    if failed:
        raise Failure(f"{path}: {len(failed)} of {len(folders)} dumps cannot be shown: "
                      f"{', '.join(failed)}")
    return OK


# -- check -------------------------------------------------------------

def cmd_check(args) -> int:
    from dumpfs.backends import devcheck
    try:
        mode = os.stat(args.device).st_mode
    except OSError as exc:
        raise Failure(f"{args.device}: {exc.strerror}") from None
    if not stat.S_ISBLK(mode) and not stat.S_ISREG(mode):
        raise Failure(f"{args.device}: not a disk or disk image (a tape's dump tool cannot be "
                      f"checked; use `dumpfs info`)", USAGE)
    report, name = devcheck.check(args.device)
    sys.stdout.write(report.text(name))
    sys.stdout.flush()
    return OK if report.valid else BAD_INPUT


# -- convert -----------------------------------------------------------

BLOCK = 4 << 20


def cmd_convert(args) -> int:
    from dumpfs.views.vmcore import vmcore_file
    dumps = _open_all(args.sources, args.partial)
    if len(dumps) != 1:
        names = "; ".join(", ".join(d.sources) or "?" for d in dumps)
        for other in dumps:
            other.close()
        raise Failure(f"the sources are {len(dumps)} dumps ({names}), convert writes one: give one "
                      f"dump, or the volumes of one multi-volume dump", USAGE)
    dump = dumps[0]
    try:
        vmcore = vmcore_file(dump)
        size = vmcore.size
        progress = args.progress or (sys.stderr.isatty() and not args.quiet)
        if args.output == "-":
            _copy(vmcore, size, sys.stdout.buffer, progress, "-")
            sys.stdout.buffer.flush()
            return OK
        _check_output(args.output, args.sources, args.force)
        tmp = args.output + ".tmp"
        try:
            out = open(tmp, "wb")
        except OSError as exc:
            raise Failure(f"{args.output}: cannot write: {exc.strerror}", OUTPUT_FAILED) from None
        try:
            with out:
                _copy(vmcore, size, out, progress, args.output)
            os.replace(tmp, args.output)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    finally:
        dump.close()
    return OK


def _check_output(output: str, sources: list[str], force: bool) -> None:
    """convert never writes over one of its sources, nor over an existing file without --force."""
    try:
        out = os.stat(output)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise Failure(f"{output}: cannot write: {exc.strerror}", OUTPUT_FAILED) from None
    for source in sources:
        try:
            if os.path.samestat(out, os.stat(source)):
                raise Failure(f"{output}: is the source {source}; write the conversion elsewhere",
                              OUTPUT_FAILED)
        except OSError:
            continue
    if not force:
        raise Failure(f"{output}: exists (--force replaces it)", OUTPUT_FAILED)


def _copy(vmcore, size: int, out, progress: bool, name: str) -> None:
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024,
                   desc="convert", file=sys.stderr, leave=False)
    try:
        offset = 0
        while offset < size:
            try:
                data = vmcore.read(offset, min(BLOCK, size - offset))
            except (MemoryUnavailable, OSError) as exc:
                raise Failure(f"vmcore offset {offset:#x}: cannot read: {exc}") from None
            if not data:
                raise Failure(f"vmcore ends early at offset {offset:#x} of {size:#x}")
            try:
                out.write(data)
            except BrokenPipeError:
                raise                   # `dumpfs convert x - | head`: main() ends quietly
            except OSError as exc:
                raise Failure(f"{name}: cannot write: {exc.strerror}", OUTPUT_FAILED) from None
            offset += len(data)
            if bar is not None:
                bar.update(len(data))
    finally:
        if bar is not None:
            bar.close()


# -- main --------------------------------------------------------------

CHECK_EXIT_CODES = """\
exit codes:
  0    a valid, complete dump is on the device
  1    no dump, an incomplete or invalid dump, or no dump tool
  2    bad command line (or not a disk)
"""


def _examples(*lines: str, exits: str = EXIT_CODES) -> str:
    return "examples:\n" + "".join(f"  {line}\n" for line in lines) + "\n" + exits


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        """Usage errors are one line too (plus a hint), exit code 2."""
        _say(f"{message} (see `{self.prog} --help`)")
        sys.exit(USAGE)


def build_parser() -> argparse.ArgumentParser:
    from importlib.metadata import PackageNotFoundError, version
    try:
        ver = version("dumpfs")
    except PackageNotFoundError:
        ver = "unknown"
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true",
                        help="log every failed request and show tracebacks (mount: implies -f)")
    fmt = argparse.RawDescriptionHelpFormatter
    parser = _Parser(prog="dumpfs", description=DESCRIPTION, epilog=EXAMPLES + "\n" + EXIT_CODES,
                     formatter_class=fmt, parents=[common])
    parser.add_argument("--version", action="version", version=f"dumpfs {ver}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    command = functools.partial(sub.add_parser, parents=[common], formatter_class=fmt)

    p = command("mount", help="mount dumps as a read-only file tree",
                description="Mount one dump at MOUNTPOINT, or several dumps as one subfolder "
                            "each (named after the file), or a directory of dumps as one "
                            "subfolder per dump found there (kept up to date; see README).  "
                            "Runs in the background once the mount is ready, unless -f.",
                epilog=_examples("dumpfs mount vmcore /mnt/dump",
                                 "dumpfs mount -o allow_other a.kdump b.elf /mnt/dumps",
                                 "dumpfs mount /var/crash /mnt/crash"))
    p.add_argument("-f", "--foreground", action="store_true",
                   help="stay in the foreground; Ctrl-C unmounts")
    p.add_argument("-o", dest="options", action="append", default=[], metavar="OPT[,OPT...]",
                   help="FUSE mount options, e.g. allow_other (needs user_allow_other in "
                        "/etc/fuse.conf for non-root users); direct_io bypasses the page "
                        "cache (slower for tools that re-read pages); zero_excluded reads "
                        "the pages the dump lacks (excluded, missing, unmapped) in memory/ "
                        "and proc/PID/ as zeros (memory/map and proc/PID/regions/map list "
                        "them), so cp, rsync and tar copy every file whole; uid=, gid=, "
                        "umask= set owner and mode")
    p.add_argument("--partial", action="store_true",
                   help="mount a multi-volume dump even with volumes missing (their memory "
                        "reads as missing)")
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="dump file, block device or tape; the volumes of a multi-volume "
                        "DASD dump together make one dump; or one directory of dumps "
                        "(/var/crash): a subfolder per dump, updated as they come and go")
    _symbol_source_options(p)
    p.add_argument("mountpoint", metavar="MOUNTPOINT", help="an existing directory")
    p.set_defaults(func=cmd_mount)

    p = command("umount", help="unmount a dumpfs mount",
                description="Unmount (fusermount3 -u, else umount); the daemon exits.",
                epilog=_examples("dumpfs umount /mnt/dump", "dumpfs umount --lazy /mnt/dump"))
    p.add_argument("-l", "--lazy", action="store_true",
                   help="detach now even if files are open (or the daemon is dead)")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.set_defaults(func=cmd_umount)

    p = command("info", help="describe a dump (format, kernel, CPUs, memory, damage)",
                description="Print what the mounted `info` file would show; for a directory "
                            "of dumps, what each of its folders' `info` would show (exit 1 "
                            "if there is none, or one cannot be opened).",
                epilog=_examples("dumpfs info vmcore", "dumpfs info --json vmcore",
                                 "dumpfs info /var/crash"))
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="a dump; several volumes of one multi-volume DASD dump are one dump; "
                        "or one directory of dumps")
    p.add_argument("--json", action="store_true", help="machine-readable, as info.json")
    p.add_argument("--partial", action="store_true",
                   help="describe a multi-volume dump even with volumes missing")
    _symbol_source_options(p)
    p.set_defaults(func=cmd_info)

    p = command("check", help="which dump tool a disk has and whether a complete dump is on it",
                description="Like zgetdump -d: the installed stand-alone dump tool (multi-volume "
                            "DASD, ECKD, FBA, SCSI), its settings, the volumes of a multi-volume "
                            "set, and whether a valid, complete dump is on the device.  A "
                            "partition is checked through its disk where sysfs knows it.",
                epilog=_examples("dumpfs check /dev/dasdb", "dumpfs check disk.img",
                                 exits=CHECK_EXIT_CODES))
    p.add_argument("device", metavar="DEVICE", help="a disk, partition or disk image")
    p.set_defaults(func=cmd_check)

    p = command("convert", help="write a dump as an ELF vmcore",
                description="Write exactly the bytes of the mounted `vmcore` file: an ELF core "
                            "that crash, gdb and drgn read.  The output appears under its name "
                            "only when complete.",
                epilog=_examples("dumpfs convert dump.kdump vmcore.elf",
                                 "dumpfs convert /dev/dasdb1 /dev/dasdc1 /dev/dasdd1 vmcore.elf",
                                 "dumpfs convert dump.kdump - | ssh host 'cat > vmcore'"))
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="a dump; several volumes of one multi-volume DASD dump are one dump")
    p.add_argument("output", metavar="OUTPUT", help="file to write, or - for stdout")
    p.add_argument("--partial", action="store_true",
                   help="convert a multi-volume dump even with volumes missing (their memory "
                        "is left out of the output)")
    p.add_argument("--format", choices=["elf"], default="elf", help="output format (elf)")
    p.add_argument("--progress", action="store_true",
                   help="progress bar on stderr even when it is not a terminal")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    p.set_defaults(func=cmd_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        redact_own_command_line()   # a mount daemon lives long; ps shows it to every user
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except KeyboardInterrupt:
        return INTERRUPTED
    if args.command == "mount" and args.debug:
        args.foreground = True
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="dumpfs: %(message)s")
    try:
        return args.func(args)
    except Failure as exc:
        _say(str(exc))
        return exc.code
    except DumpfsError as exc:
        _say(f"cannot read the dump: {exc}" if isinstance(exc, Unavailable) else str(exc))
        return next((code for kind, code in ERROR_EXITS if isinstance(exc, kind)), BAD_INPUT)
    except BrokenPipeError:
        # the reader went away (`dumpfs convert x - | head`): not worth a message
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except OSError:
            pass
        return OUTPUT_FAILED
    except OSError as exc:
        _say(_oserror_text(exc))
        return BAD_INPUT
    except KeyboardInterrupt:
        _say("interrupted")
        return INTERRUPTED
    except Exception as exc:    # noqa: BLE001 - a bug, but still one line unless --debug
        if args.debug:
            log.exception("internal error")
        _say(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for details)")
        return INTERNAL


if __name__ == "__main__":
    sys.exit(main())
