"""The kernel log from the dumped printk buffer, formatted as `dmesg` prints it.

5.10+ kernels keep a lockless ring buffer (kernel/printk/printk_ringbuffer.h),
described by VMCOREINFO offsets (elf-vmcore.md §8):

    struct printk_ringbuffer { struct prb_desc_ring desc_ring;
                               struct prb_data_ring text_data_ring; atomic_long_t fail; }
    struct prb_desc_ring { unsigned int count_bits; struct prb_desc *descs;
                           struct printk_info *infos; atomic_long_t head_id, tail_id; }
    struct prb_desc      { atomic_long_t state_var; struct prb_data_blk_lpos text_blk_lpos; }
    struct prb_data_ring { unsigned int size_bits; char *data;
                           atomic_long_t head_lpos, tail_lpos; }
    struct printk_info   { u64 seq; u64 ts_nsec; u16 text_len; ...; u32 caller_id; ... }

Older kernels keep `struct printk_log` records in log_buf (SYMBOL(log_buf) ...).

Every loop is bounded by the ring's own size, and every id, state and
position is checked, so a damaged buffer gives a partial log and reasons,
never a hang.  Lines are formatted like the kernel's syslog records (what
`dmesg` shows): each line of a multi-line record gets the record's
"[    1.029887] " prefix.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from dumpfs.errors import LogUnavailable, MemoryUnavailable
from dumpfs.kernel.address_space import KernelMemory
from dumpfs.model import Dump

MAX_COUNT_BITS = 24             # 16 M descriptors: far beyond any real log_buf_len
MAX_DATA_BITS = 31              # 2 GiB of text
BULK_LIMIT = 64 << 20           # read rings up to this size in one piece
MAX_TEXT = 1 << 16              # one record's text (LOG_LINE_MAX is 1 KiB)
MAX_FAILURES_IN_A_ROW = 1024    # unreadable or inconsistent descriptors before giving up

# desc state (top two bits of state_var)
DESC_RESERVED, DESC_COMMITTED, DESC_FINALIZED, DESC_REUSABLE = range(4)


@dataclass
class Record:
    seq: int
    ts_nsec: int
    text: bytes
    caller_id: int = 0


@dataclass
class KernelLog:
    records: list[Record] = field(default_factory=list)
    source: str = ""
    problems: list[str] = field(default_factory=list)

    def text(self) -> bytes:
        return format_dmesg(self.records)


def format_dmesg(records) -> bytes:
    out = []
    for r in records:
        seconds, nsec = divmod(r.ts_nsec, 1_000_000_000)
        prefix = b"[%5d.%06d] " % (seconds, nsec // 1000)
        for line in r.text.split(b"\n"):
            out.append(prefix + line + b"\n")
    return b"".join(out)


class _Keys:
    """VMCOREINFO lookups that raise LogUnavailable naming the missing key."""

    def __init__(self, info):
        self.info = info

    def symbol(self, name: str) -> int:
        value = self.info.symbol(name)
        if value is None:
            raise LogUnavailable(f"VMCOREINFO lacks SYMBOL({name})")
        return value

    def offset(self, name: str) -> int:
        return self._number(f"OFFSET({name})")

    def size(self, name: str) -> int:
        return self._number(f"SIZE({name})")

    def _number(self, key: str) -> int:
        value = self.info.number(key)
        if value is None:
            raise LogUnavailable(f"VMCOREINFO lacks {key}")
        return value


def read_kernel_log(dump: Dump, kmem: KernelMemory) -> KernelLog:
    """The kernel log; raises LogUnavailable when nothing can be read."""
    info = dump.vmcoreinfo
    if info is None:
        raise LogUnavailable("no VMCOREINFO: the printk buffer cannot be found")
    if info.symbol("prb") is not None:
        return _read_lockless(kmem, _Keys(info))
    if info.symbol("log_buf") is not None:
        return _read_log_buf(kmem, _Keys(info))
    raise LogUnavailable("VMCOREINFO has neither SYMBOL(prb) (5.10+) nor SYMBOL(log_buf)")


class _Ring:
    """A byte ring read in one piece when possible, else per block (pages may be missing)."""

    def __init__(self, kmem: KernelMemory, address: int, size: int):
        self.kmem, self.address, self.size = kmem, address, size
        self.data = None
        if size <= BULK_LIMIT:
            self.data = kmem.try_read(address, size)

    def read(self, offset: int, length: int) -> bytes:
        if self.data is not None:
            return self.data[offset:offset + length]
        return self.kmem.read(self.address + offset, length)


def _read_lockless(kmem: KernelMemory, k: _Keys) -> KernelLog:
    long_size = 8
    id_mask = (1 << (8 * long_size - 2)) - 1      # DESC_ID_MASK
    state_shift = 8 * long_size - 2
    log = KernelLog(source="printk ringbuffer (prb)")
    try:
        prb = kmem.read_pointer(k.symbol("prb"))
        desc_ring = prb + k.offset("printk_ringbuffer.desc_ring")
        data_ring = prb + k.offset("printk_ringbuffer.text_data_ring")
        count_bits = kmem.read_u32(desc_ring + k.offset("prb_desc_ring.count_bits"))
        descs = kmem.read_pointer(desc_ring + k.offset("prb_desc_ring.descs"))
        infos = kmem.read_pointer(desc_ring + k.offset("prb_desc_ring.infos"))
        counter = k.offset("atomic_long_t.counter")
        head_id = kmem.read_u64(desc_ring + k.offset("prb_desc_ring.head_id") + counter) & id_mask
        tail_id = kmem.read_u64(desc_ring + k.offset("prb_desc_ring.tail_id") + counter) & id_mask
        size_bits = kmem.read_u32(data_ring + k.offset("prb_data_ring.size_bits"))
        data = kmem.read_pointer(data_ring + k.offset("prb_data_ring.data"))
        desc_size, info_size = k.size("prb_desc"), k.size("printk_info")
        state_off = k.offset("prb_desc.state_var") + counter
        lpos_off = k.offset("prb_desc.text_blk_lpos")
        begin_off = lpos_off + k.offset("prb_data_blk_lpos.begin")
        next_off = lpos_off + k.offset("prb_data_blk_lpos.next")
        seq_off, ts_off = k.offset("printk_info.seq"), k.offset("printk_info.ts_nsec")
        len_off, caller_off = k.offset("printk_info.text_len"), k.offset("printk_info.caller_id")
    except MemoryUnavailable as exc:
        raise LogUnavailable(f"printk ringbuffer unreadable: {exc}") from None
    if not 0 < count_bits <= MAX_COUNT_BITS:
        raise LogUnavailable(f"printk ringbuffer: absurd count_bits {count_bits}")
    if not 0 < size_bits <= MAX_DATA_BITS:
        raise LogUnavailable(f"printk ringbuffer: absurd size_bits {size_bits}")
    count, data_size = 1 << count_bits, 1 << size_bits

    # tail..head, at most `count` records (a sane ring never holds more)
    span = (head_id - tail_id) & id_mask
    if span >= count:
        log.problems.append(f"tail_id {tail_id:#x} is {span} ids before head_id {head_id:#x} "
                            f"in a ring of {count}: reading the last {count}")
        tail_id = (head_id - count + 1) & id_mask
        span = count - 1

    descs_bytes = _Ring(kmem, descs, count * desc_size)
    infos_bytes = _Ring(kmem, infos, count * info_size)
    text = _Ring(kmem, data, data_size)
    unpack = kmem.dump.arch.struct_prefix
    u64 = struct.Struct(unpack + "Q")
    u32 = struct.Struct(unpack + "I")
    u16 = struct.Struct(unpack + "H")
    skipped = unreadable = 0
    last_seq = None

    failures_in_a_row = 0
    for step in range(span + 1):
        if failures_in_a_row > MAX_FAILURES_IN_A_ROW:
            log.problems.append(f"gave up after {failures_in_a_row} bad descriptors in a row "
                                f"({span + 1 - step} not tried)")
            break
        failures_in_a_row += 1          # reset once the record is read
        rid = (tail_id + step) & id_mask
        index = rid % count
        try:
            desc = descs_bytes.read(index * desc_size, desc_size)
            state_var = u64.unpack_from(desc, state_off)[0]
            state = state_var >> state_shift
            if state_var & id_mask != rid:
                skipped += 1        # overwritten since tail_id was read, or damaged
                continue
            if state not in (DESC_COMMITTED, DESC_FINALIZED):
                failures_in_a_row = 0
                continue            # being written (reserved) or dropped (reusable): normal

            begin = u64.unpack_from(desc, begin_off)[0]
            next_lpos = u64.unpack_from(desc, next_off)[0]
            record_info = infos_bytes.read(index * info_size, info_size)
            seq = u64.unpack_from(record_info, seq_off)[0]
            ts_nsec = u64.unpack_from(record_info, ts_off)[0]
            text_len = u16.unpack_from(record_info, len_off)[0]
            caller_id = u32.unpack_from(record_info, caller_off)[0]
            body = _block_text(text, data_size, begin, next_lpos, text_len, long_size,
                               rid, id_mask, kmem.byteorder)
        except MemoryUnavailable:
            unreadable += 1
            continue
        if body is None:
            skipped += 1
            continue
        if seq % count != index:
            skipped += 1      # the kernel's own check: info->seq must belong to this slot
            continue
        if last_seq is not None and seq <= last_seq:
            skipped += 1
            continue
        last_seq = seq
        failures_in_a_row = 0
        log.records.append(Record(seq, ts_nsec, body, caller_id))
    if skipped:
        log.problems.append(f"{skipped} descriptors skipped (reserved, reused or inconsistent)")
    if unreadable:
        log.problems.append(f"{unreadable} records unreadable (memory missing from the dump)")
    if not log.records and (skipped or unreadable):
        raise LogUnavailable("printk ringbuffer: no readable record; " + "; ".join(log.problems))
    return log


def _block_text(ring: _Ring, size: int, begin: int, next_lpos: int, text_len: int,
                long_size: int, rid: int, id_mask: int, byteorder: str) -> bytes | None:
    """The text of a data block [begin, next) (get_data() in printk_ringbuffer.c)."""
    if begin & 1 or next_lpos & 1:
        return b""                                  # data-less record (LPOS_DATALESS)
    wraps_begin, wraps_next = begin // size, next_lpos // size
    if wraps_begin == wraps_next:
        if next_lpos < begin:
            return None
        start, length = begin % size, next_lpos - begin
    elif wraps_begin + 1 == wraps_next:
        start, length = 0, next_lpos % size         # wrapped: the block is at the ring's start
    else:
        return None
    if length < long_size or length > size or start + length > size:
        return None
    block_id = int.from_bytes(ring.read(start, long_size), byteorder)
    if block_id & id_mask != rid:
        return None                                 # the block belongs to another record
    length -= long_size                              # the block starts with its id
    return ring.read(start + long_size, min(text_len, length, MAX_TEXT))


def _read_log_buf(kmem: KernelMemory, k: _Keys) -> KernelLog:
    """Pre-5.10 `struct printk_log` records between log_first_idx and log_next_idx."""
    log = KernelLog(source="log_buf (struct printk_log)")
    try:
        buf = kmem.read_pointer(k.symbol("log_buf"))
        buf_len = kmem.read_u32(k.symbol("log_buf_len"))
        first = kmem.read_u32(k.symbol("log_first_idx"))
        next_idx = kmem.read_u32(k.symbol("log_next_idx"))
        header = k.size("printk_log")
        ts_off, len_off = k.offset("printk_log.ts_nsec"), k.offset("printk_log.len")
        text_len_off = k.offset("printk_log.text_len")
    except MemoryUnavailable as exc:
        raise LogUnavailable(f"log_buf unreadable: {exc}") from None
    if not 0 < buf_len <= 1 << MAX_DATA_BITS or first >= buf_len or next_idx >= buf_len:
        raise LogUnavailable(f"log_buf: absurd length {buf_len} or indexes {first}/{next_idx}")
    ring = _Ring(kmem, buf, buf_len)
    p = kmem.dump.arch.struct_prefix
    idx, seq, wrapped = first, 0, False
    for _ in range(buf_len // max(header, 1) + 2):
        if idx == next_idx and (seq or first == next_idx):
            break
        try:
            head = ring.read(idx, header)
        except MemoryUnavailable as exc:
            log.problems.append(f"log_buf record at {idx} unreadable: {exc}")
            break
        if len(head) < header:
            break
        rec_len = struct.unpack_from(p + "H", head, len_off)[0]
        if rec_len == 0:                            # wrap marker: continue at the start
            if wrapped:
                log.problems.append("log_buf: wrapped twice, stopping")
                break
            wrapped, idx = True, 0
            continue
        if rec_len < header or idx + rec_len > buf_len:
            log.problems.append(f"log_buf: bad record length {rec_len} at {idx}")
            break
        text_len = struct.unpack_from(p + "H", head, text_len_off)[0]
        ts_nsec = struct.unpack_from(p + "Q", head, ts_off)[0]
        try:
            body = ring.read(idx + header, min(text_len, rec_len - header))
        except MemoryUnavailable:
            body = b""
        log.records.append(Record(seq, ts_nsec, body))
        seq += 1
        idx += rec_len
    else:
        log.problems.append("log_buf: record walk did not reach log_next_idx")
    if not log.records:
        raise LogUnavailable("log_buf: no record; " + "; ".join(log.problems))
    return log
