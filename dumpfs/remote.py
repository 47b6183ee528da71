"""Dumps at http(s):// and s3:// URLs as a Source: ranged reads through a bounded block cache.

Nothing is downloaded whole: the size and version (ETag, else Last-Modified)
come from one HEAD, and every read fetches the 32 KiB blocks it covers with
one ranged GET per run of missing blocks (fsspec: aiohttp for HTTP, s3fs for
S3).  Fetched blocks are kept in a small memory LRU (what the FUSE event
loop may serve without waiting) and on disk under cache_dir("remote"), one
0600 file per block in a 0700 folder per object, the folder keyed by URL,
version and size, so a changed object is never served from a stale cache;
the whole folder is bounded ($DUMPFS_REMOTE_CACHE_SIZE) with least recently
used blocks evicted first.  Every GET also carries If-Match (HTTP, S3) or
If-Unmodified-Since, so an object replaced while mounted fails instead of
mixing two versions.

A transient failure (connection refused or reset, timeout, 5xx, 429) is
retried with exponential backoff, a bounded number of times
($DUMPFS_REMOTE_RETRIES, each try at most $DUMPFS_REMOTE_TIMEOUT seconds);
a range still unreachable then fails with OSError(EIO) for that read only:
not MemoryUnavailable, which would tell the kernel readers that the dump
lacks the page.  The next read tries the server again, so a mount serves
again as soon as the server is back.

Credentials come from the standard places only: AWS's environment variables
and ~/.aws (botocore's chain, including AWS_ENDPOINT_URL for an S3-compatible
server), ~/.netrc for HTTP.  A URL with user:password@ is refused, and every
name shown (info, findmnt, messages) has its query string redacted, since a
pre-signed URL's query is a credential.
"""

from __future__ import annotations

import collections
import errno
import hashlib
import logging
import os
import threading
import time
import urllib.parse

import aiohttp
import fsspec
from fsspec.asyn import sync

from dumpfs.cache import cache_dir
from dumpfs.errors import DumpError, MissingPart, NoDump
from dumpfs.waiting import WouldBlock, waiting_forbidden
from dumpfs.source import Source
from dumpfs.url import is_url, redact, redact_all

BLOCK_SIZE = 32 << 10                    # small: sparse readers (page tables, task lists) fetch little
MEMORY_BLOCKS = 128                     # 16 MiB of recent blocks, served on the FUSE event loop
MAX_FETCH = 8 << 20                     # one GET fetches at most this many bytes
DEFAULT_CACHE_SIZE = 4 << 30
DEFAULT_RETRIES = 3
DEFAULT_TIMEOUT = 10.0                  # seconds per try
BACKOFF = 0.25                          # seconds before the first retry, doubled after each

CHANGED = "the object changed since it was opened"
PERMANENT_STATUS = {400, 401, 403, 404, 405, 410, 412, 416}
QUIET_LOGGERS = ("fsspec", "s3fs", "aiobotocore", "botocore", "boto3", "urllib3", "aiohttp")

log = logging.getLogger(__name__)
for _name in QUIET_LOGGERS:      # their debug lines carry request headers and signatures
    logging.getLogger(_name).setLevel(logging.WARNING)


def _setting(name: str, default: float, parse=float) -> float:
    text = os.environ.get(name)
    if not text:
        return default
    try:
        value = parse(text)
    except ValueError:
        raise DumpError(f"${name}={text}: not a number") from None
    if value < 0:
        raise DumpError(f"${name}={text}: must not be negative")
    return value


def _size_setting(text: str) -> int:
    """A byte count with an optional K, M, G or T suffix (powers of 1024)."""
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = 1
    if text and text[-1] in "KMGT":
        scale = 1 << (10 * ("KMGT".index(text[-1]) + 1))
        text = text[:-1]
    return int(float(text) * scale)


def cache_limit() -> int:
    return int(_setting("DUMPFS_REMOTE_CACHE_SIZE", DEFAULT_CACHE_SIZE, _size_setting))


def _why(exc: BaseException) -> tuple[str, bool]:
    """(what went wrong, whether trying again may help), in words that carry no URL
    (aiohttp's and fsspec's own texts include it, query string and all)."""
    if isinstance(exc, FileNotFoundError) and exc.__cause__ is not None:
        exc = exc.__cause__             # fsspec's HEAD says "not found" for any failure
    if isinstance(exc, FileNotFoundError):
        return ("no such object (HTTP 404, NoSuchKey)", False)
    if isinstance(exc, PermissionError):
        return ("access denied (check the credentials)", False)
    status = getattr(exc, "status", None)
    if status == 404:
        return ("no such object (HTTP 404)", False)
    if status == 412:
        return (CHANGED + " (HTTP 412)", False)
    if isinstance(status, int):
        return (f"HTTP {status} {getattr(exc, 'message', '') or ''}".strip(),
                status not in PERMANENT_STATUS)
    response = getattr(exc, "response", None)       # botocore ClientError
    if isinstance(response, dict):
        error = response.get("Error", {})
        code = str(error.get("Code", ""))
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        transient = status >= 500 or status == 429 or code in ("SlowDown", "Throttling")
        if code in ("PreconditionFailed", "412"):
            return (CHANGED, False)
        return (f"S3 error {code or status}", transient)
    text = redact_all(str(exc))
    if "PreconditionFailed" in text:      # s3fs turned the ClientError into an OSError
        return (CHANGED, False)
    return (f"{type(exc).__name__}: {text}" if text else type(exc).__name__, True)


class HttpObject:
    """One object on an HTTP(S) server, through fsspec's HTTPFileSystem (aiohttp)."""

    def __init__(self, url: str, timeout: float):
        self.url = url
        self.timeout = timeout
        self.precondition: dict[str, str] = {}
        self.fs = self._filesystem()

    def _filesystem(self):
        timeout = aiohttp.ClientTimeout(total=self.timeout, connect=min(self.timeout, 5.0))
        # trust_env: ~/.netrc (or $NETRC) for credentials, $HTTPS_PROXY and friends
        return fsspec.filesystem("http", skip_instance_cache=True,
                                 client_kwargs={"timeout": timeout, "trust_env": True})

    def stat(self) -> tuple[int, str]:
        """(size, version): version is the ETag or Last-Modified, "" when the server gives neither."""
        info = self.fs.info(self.url)
        if info.get("partial") is False:
            raise NoDump("the server refuses byte ranges (Accept-Ranges: none)")
        if info.get("size") is None:
            raise NoDump("the server does not say how large the object is")
        etag, modified = info.get("ETag", ""), info.get("Last-Modified", "")
        if etag and not etag.startswith("W/"):
            self.precondition = {"If-Match": etag}
        elif modified:
            self.precondition = {"If-Unmodified-Since": modified}
        return int(info["size"]), f"ETag {etag}" if etag else (
            f"Last-Modified {modified}" if modified else "")

    def get(self, start: int, end: int) -> bytes:
        return self.fs.cat_file(self.url, start=start, end=end, headers=dict(self.precondition))

    def reopened(self) -> "HttpObject":
        """The same object for a forked process (an aiohttp session belongs to its event loop)."""
        other = HttpObject.__new__(HttpObject)
        other.__dict__.update(self.__dict__)
        other.fs = other._filesystem()
        return other


async def _s3_range(fs, bucket: str, key: str, start: int, end: int, etag: str) -> bytes:
    condition = {"IfMatch": etag} if etag else {}
    response = await fs._call_s3("get_object", Bucket=bucket, Key=key,
                                 Range=f"bytes={start}-{end - 1}", **condition)
    try:
        return await response["Body"].read()
    finally:
        response["Body"].close()


class S3Object:
    """One object in S3 or an S3-compatible store, through s3fs (botocore's credential chain)."""

    def __init__(self, url: str, timeout: float):
        parts = urllib.parse.urlsplit(url)
        self.bucket, self.key = parts.netloc, parts.path.lstrip("/")
        if not self.bucket or not self.key:
            raise NoDump(f"{redact(url)}: an S3 URL is s3://BUCKET/KEY")
        self.timeout = timeout
        self.etag = ""
        self.fs = self._filesystem()

    def _filesystem(self):
        fs = fsspec.filesystem("s3", skip_instance_cache=True, config_kwargs={
            "connect_timeout": min(self.timeout, 5.0), "read_timeout": self.timeout,
            "retries": {"max_attempts": 1}})       # the retries are ours, bounded
        fs.retries = 1
        return fs

    def stat(self) -> tuple[int, str]:
        info = self.fs.info(f"{self.bucket}/{self.key}")
        if info.get("type") == "directory":
            raise MissingPart("no such object (a prefix, not a key)")
        self.etag = info.get("ETag", "")
        modified = info.get("LastModified", "")
        return int(info["size"]), f"ETag {self.etag}" if self.etag else (
            f"LastModified {modified}" if modified else "")

    def get(self, start: int, end: int) -> bytes:
        return sync(self.fs.loop, _s3_range, self.fs, self.bucket, self.key, start, end, self.etag,
                    timeout=self.timeout * 2)

    def reopened(self) -> "S3Object":
        other = S3Object.__new__(S3Object)
        other.__dict__.update(self.__dict__)
        other.fs = other._filesystem()
        return other


class Budget:
    """The size bound of the whole remote cache folder, shared by every object of a process.

    The total is counted once (a scan of the folder) and kept up to date by
    what this process writes; when it passes the limit, the least recently
    used blocks (oldest mtime: a hit touches its block) are removed until a
    tenth of the limit is free again.  Other processes sharing the folder are
    seen at the next eviction's scan.
    """

    def __init__(self, root, limit: int):
        self.root = root
        self.limit = limit
        self.total: int | None = None
        self.lock = threading.Lock()

    def _blocks(self):
        try:
            folders = list(os.scandir(self.root))
        except OSError:
            return
        for folder in folders:
            if not folder.is_dir(follow_symlinks=False):
                continue
            try:
                for entry in os.scandir(folder.path):
                    if entry.is_file(follow_symlinks=False):
                        yield entry
            except OSError:
                continue

    def added(self, size: int) -> None:
        with self.lock:
            if self.total is None:
                self.total = sum(entry.stat().st_size for entry in self._blocks())
            self.total += size
            if self.total > self.limit:
                self._evict()

    def _evict(self) -> None:
        entries = []
        for entry in self._blocks():
            try:
                st = entry.stat()
            except OSError:
                continue
            entries.append((st.st_mtime_ns, st.st_size, entry.path))
        entries.sort()
        total = sum(size for _, size, _ in entries)
        goal = self.limit - self.limit // 10
        for _, size, path in entries:
            if total <= goal:
                break
            try:
                os.unlink(path)
                total -= size
            except OSError:
                pass
        self.total = total


_budgets: dict[str, Budget] = {}
_budgets_lock = threading.Lock()


def _budget(root) -> Budget:
    with _budgets_lock:
        budget = _budgets.get(str(root))
        if budget is None:
            budget = _budgets[str(root)] = Budget(root, cache_limit())
        return budget


class BlockCache:
    """Blocks of one object version: a memory LRU in front of 0600 files in a 0700 folder."""

    def __init__(self, key: str | None):
        self.memory: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        self.lock = threading.Lock()
        self.folder = None
        self.budget = None
        if key is None:
            return                  # no version to key it by: memory only, never on disk
        root = cache_dir("remote")
        try:
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
            folder = root / key
            folder.mkdir(mode=0o700, exist_ok=True)
            os.chmod(folder, 0o700)
        except OSError as exc:
            log.warning("remote block cache disabled: %s: %s", root, exc.strerror)
            return
        self.folder = folder
        self.budget = _budget(root)

    def cached(self, index: int) -> bytes | None:
        with self.lock:
            data = self.memory.get(index)
            if data is not None:
                self.memory.move_to_end(index)
        return data

    def load(self, index: int, length: int) -> bytes | None:
        """A block from memory or disk (a disk hit counts as a use for the LRU)."""
        data = self.cached(index)
        if data is not None or self.folder is None:
            return data
        path = self.folder / str(index)
        try:
            with open(path, "rb") as f:
                data = f.read(length + 1)
            os.utime(path)
        except OSError:
            return None
        if len(data) != length:
            return None
        self._remember(index, data)
        return data

    def store(self, index: int, data: bytes) -> None:
        self._remember(index, data)
        if self.folder is None:
            return
        path = self.folder / str(index)
        temporary = self.folder / f".{index}.{os.getpid()}.{threading.get_ident()}"
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            os.rename(temporary, path)
        except OSError as exc:
            log.debug("remote block cache: cannot write %s: %s", path, exc.strerror)
            try:
                os.unlink(temporary)
            except OSError:
                pass
            return
        self.budget.added(len(data))

    def _remember(self, index: int, data: bytes) -> None:
        with self.lock:
            self.memory[index] = data
            self.memory.move_to_end(index)
            while len(self.memory) > MEMORY_BLOCKS:
                self.memory.popitem(last=False)


class RemoteSource(Source):
    """An object at an http(s):// or s3:// URL; `container` says where it is for `info`."""

    def __init__(self, url: str):
        if not is_url(url):
            raise NoDump(f"{url}: not an http://, https:// or s3:// URL")
        self.name = redact(url)
        if "@" in urllib.parse.urlsplit(url).netloc:
            raise DumpError(f"{self.name}: credentials in the URL are refused (they would show in "
                            f"ps, logs and findmnt): use ~/.netrc for HTTP, the AWS environment "
                            f"variables or ~/.aws for S3")
        self.retries = int(_setting("DUMPFS_REMOTE_RETRIES", DEFAULT_RETRIES, int))
        self.timeout = _setting("DUMPFS_REMOTE_TIMEOUT", DEFAULT_TIMEOUT)
        scheme = url.split(":", 1)[0].lower()
        try:
            self.remote = (S3Object if scheme == "s3" else HttpObject)(url, self.timeout)
            self.size, version = self._with_retries(self.remote.stat, "cannot open")
        except OSError as exc:
            raise MissingPart(exc.strerror) from None
        except DumpError as exc:
            raise type(exc)(f"{self.name}: {exc}") from None
        self._pid = os.getpid()
        key = hashlib.sha256(f"{url}\0{version}\0{self.size}\0{BLOCK_SIZE}".encode()).hexdigest()
        self.identity = ("remote", key)
        self.blocks = BlockCache(key[:40] if version else None)
        self.container = (
            f"remote object {self.name} ({self.size:,} bytes, {version or 'no version given'}), "
            f"read by range in {BLOCK_SIZE >> 10} KiB blocks, "
            + (f"cached in {self.blocks.folder}" if self.blocks.folder else "cached in memory only"))

    def _with_retries(self, request, what: str):
        """request(), tried again after transient failures with exponential backoff; else EIO."""
        delay = BACKOFF
        for attempt in range(self.retries + 1):
            try:
                return request()
            except DumpError:
                raise
            except Exception as exc:    # noqa: BLE001 - every library's error: sorted by _why
                why, transient = _why(exc)
            if not transient or attempt == self.retries:
                break
            log.debug("%s: %s: %s; trying again in %.2f s", self.name, what, why, delay)
            time.sleep(delay)
            delay *= 2
        tries = f" (after {attempt + 1} tries)" if attempt else ""
        raise OSError(errno.EIO, f"{self.name}: {what}: {why}{tries}")

    def _remote(self):
        if self._pid != os.getpid():       # a forked mount daemon: a new session for its loop
            self.remote = self.remote.reopened()
            self._pid = os.getpid()
        return self.remote

    def _block_length(self, index: int) -> int:
        return min(BLOCK_SIZE, self.size - index * BLOCK_SIZE)

    def read(self, offset: int, length: int) -> bytes:
        if length <= 0 or offset < 0 or offset >= self.size:
            return b""
        end = min(offset + length, self.size)
        first, last = offset // BLOCK_SIZE, (end - 1) // BLOCK_SIZE
        if waiting_forbidden():
            blocks = [self.blocks.cached(index) for index in range(first, last + 1)]
            if any(block is None for block in blocks):
                raise WouldBlock(f"{self.name}: {offset:#x} is not in the block cache")
        else:
            blocks = self._blocks(first, last)
        data = b"".join(blocks)
        start = offset - first * BLOCK_SIZE
        return data[start:start + end - offset]

    def _blocks(self, first: int, last: int) -> list[bytes]:
        """Blocks first..last: from the cache, the missing runs fetched with one GET each."""
        blocks = [self.blocks.load(index, self._block_length(index)) for index in range(first, last + 1)]
        index = first
        while index <= last:
            if blocks[index - first] is not None:
                index += 1
                continue
            stop = index
            while (stop + 1 <= last and blocks[stop + 1 - first] is None
                   and (stop + 2 - index) * BLOCK_SIZE <= MAX_FETCH):
                stop += 1
            for at, block in self._fetch(index, stop):
                blocks[at - first] = block
            index = stop + 1
        return blocks

    def _fetch(self, first: int, last: int) -> list[tuple[int, bytes]]:
        start = first * BLOCK_SIZE
        end = min((last + 1) * BLOCK_SIZE, self.size)
        what = f"bytes {start:#x}-{end:#x}"

        data = self._with_retries(lambda: self._remote().get(start, end), what)
        if len(data) != end - start:
            raise OSError(errno.EIO, f"{self.name}: {what}: {len(data):,} bytes came back: "
                                     f"the server ignores ranges or the object changed")
        fetched = []
        for index in range(first, last + 1):
            at = (index - first) * BLOCK_SIZE
            block = data[at:at + BLOCK_SIZE]
            self.blocks.store(index, block)
            fetched.append((index, block))
        return fetched


def open_url(url: str) -> RemoteSource:
    """The object at an http(s):// or s3:// URL as a Source (one HEAD; nothing else is read)."""
    return RemoteSource(url)
