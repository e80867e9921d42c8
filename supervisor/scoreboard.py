"""Per-child status in shared memory: the child writes with no syscall, the master reads.

Reporting every job start and end over a pipe would cost two syscalls per job in the child
and a wake-up of the master per message (at 10,000+ jobs/s, a core). Instead each child owns
one fixed-size slot of an anonymous shared mapping created before the first fork. Writes
are guarded by a sequence lock: odd while writing, so a reader retries a torn read.
"""

from __future__ import annotations

import mmap
import struct
import time
from dataclasses import dataclass

SLOT_SIZE = 8192
MAX_SLOTS = 256
# A child running several jobs at once (jobs_per_child > 1) has one sub-slot per job in
# flight, each smaller: 256 children x 1000 sub-slots x 2 KiB is 512 MiB of address space,
# of which only the pages of live sub-slots are ever touched (an anonymous mapping).
SUB_SLOT_SIZE = 2048
MAX_SUB_SLOTS = 1000
_HEADER = struct.Struct("<QQdddQII")  # seq, busy, started_at, started_mono, deadline, done, lens
_LABEL_AT = 64
_LABEL_MAX = 256
_EXTRA_AT = _LABEL_AT + _LABEL_MAX
_SEQ = struct.Struct("<Q")
_STAMP = struct.Struct("<Qd")  # seq, monotonic time
_TIME = struct.Struct("<d")
_LIVENESS_SIZE = 64
# offsets of the header fields written on their own (note, end), derived from its layout
_HEADER_FIELDS = ("seq", "busy", "started_at", "started_mono", "deadline", "done", "label_len",
                  "extra_len")
_OFFSET = {name: struct.calcsize(_HEADER.format[: i + 1]) for i, name in enumerate(_HEADER_FIELDS)}
_BUSY_AT, _DONE_AT, _EXTRA_LEN_AT = _OFFSET["busy"], _OFFSET["done"], _OFFSET["extra_len"]


@dataclass(frozen=True, slots=True)
class SlotState:
    busy: bool
    label: str
    started_at: float
    started_mono: float
    deadline: float | None
    jobs_done: int
    extra: bytes
    seq: int


class Scoreboard:
    """The shared mapping; ``slot(n)`` gives a reader/writer for slot n, ``slots(n)`` its
    ``per_child`` sub-slots (one per job a child may run at once; ``slot(n)`` is the first),
    ``liveness`` the master's sign of life (after the slots)."""

    def __init__(self, slots: int = MAX_SLOTS, per_child: int = 1) -> None:
        if not 1 <= per_child <= MAX_SUB_SLOTS:
            raise ValueError(f"per_child must be 1 to {MAX_SUB_SLOTS}, not {per_child}")
        self.size = slots
        self.per_child = per_child
        self.slot_size = SLOT_SIZE if per_child == 1 else SUB_SLOT_SIZE
        self.stride = per_child * self.slot_size
        self.memory = mmap.mmap(-1, slots * self.stride + _LIVENESS_SIZE, flags=mmap.MAP_SHARED)
        self.liveness = Liveness(self.memory, slots * self.stride)

    def slot(self, number: int) -> Slot:
        return self.slots(number)[0]

    def slots(self, number: int) -> list[Slot]:
        if not 0 <= number < self.size:
            raise IndexError(f"scoreboard has {self.size} slots, not {number + 1}")
        base = number * self.stride
        return [Slot(self.memory, base + i * self.slot_size, self.slot_size)
                for i in range(self.per_child)]


class Slot:
    __slots__ = ("memory", "base", "seq", "done", "extra_max")

    def __init__(self, memory: mmap.mmap, base: int, size: int = SLOT_SIZE) -> None:
        self.memory = memory
        self.base = base
        self.seq = 0
        self.done = 0
        self.extra_max = size - _EXTRA_AT  # the most bytes of extra this slot holds

    # --- child side (the only writer) ------------------------------------------------------
    def reset(self) -> None:
        self.seq, self.done = 0, 0
        _HEADER.pack_into(self.memory, self.base, 0, 0, 0.0, 0.0, 0.0, 0, 0, 0)

    def begin(self, label: str, deadline: float | None, extra: bytes = b"") -> None:
        label_bytes = label.encode("utf-8", "replace")[:_LABEL_MAX]
        extra = extra[:self.extra_max]
        memory, base = self.memory, self.base
        self.seq += 1
        _SEQ.pack_into(memory, base, self.seq)
        memory[base + _LABEL_AT : base + _LABEL_AT + len(label_bytes)] = label_bytes
        memory[base + _EXTRA_AT : base + _EXTRA_AT + len(extra)] = extra
        self.seq += 1
        _HEADER.pack_into(memory, base, self.seq, 1, time.time(), time.monotonic(),
                          deadline or 0.0, self.done, len(label_bytes), len(extra))

    def note(self, extra: bytes) -> None:
        """Replace the extra blob of the running job (e.g. a check-in)."""
        extra = extra[:self.extra_max]
        memory, base = self.memory, self.base
        self.seq += 1
        _SEQ.pack_into(memory, base, self.seq)
        memory[base + _EXTRA_AT : base + _EXTRA_AT + len(extra)] = extra
        struct.pack_into("<I", memory, base + _EXTRA_LEN_AT, len(extra))
        self.seq += 1
        _SEQ.pack_into(memory, base, self.seq)

    def end(self) -> None:
        memory, base = self.memory, self.base
        self.done += 1
        self.seq += 1
        _SEQ.pack_into(memory, base, self.seq)
        struct.pack_into("<Q", memory, base + _BUSY_AT, 0)
        struct.pack_into("<Q", memory, base + _DONE_AT, self.done)
        self.seq += 1
        _SEQ.pack_into(memory, base, self.seq)

    # --- master side ---------------------------------------------------------------------------
    def read(self) -> SlotState:
        memory, base = self.memory, self.base
        for _ in range(1000):
            seq, busy, started, mono, deadline, done, label_len, extra_len = _HEADER.unpack_from(memory, base)
            if seq & 1:
                continue
            label = bytes(memory[base + _LABEL_AT : base + _LABEL_AT + label_len]) if busy else b""
            extra = bytes(memory[base + _EXTRA_AT : base + _EXTRA_AT + extra_len]) if busy else b""
            if _SEQ.unpack_from(memory, base)[0] == seq:
                return SlotState(bool(busy), label.decode("utf-8", "replace"), started, mono,
                                 deadline or None, done, extra, seq)
        return SlotState(False, "", 0.0, 0.0, None, 0, b"", -1)


class Liveness:
    """The master stamps its monotonic clock here on every turn of its loop; a child reads how
    long the master has been silent (CLOCK_MONOTONIC is one clock for all processes of a host).

    A frozen master (SIGSTOP, a slow Redis call) writes no heartbeats, so its children must
    not go on fetching jobs that a reaper elsewhere would soon requeue as a dead pool's.
    """

    __slots__ = ("memory", "base", "seq")

    def __init__(self, memory: mmap.mmap, base: int) -> None:
        self.memory = memory
        self.base = base
        self.seq = 0

    def stamp(self, now: float | None = None) -> None:
        """Master side (the only writer)."""
        memory, base = self.memory, self.base
        self.seq += 1
        _SEQ.pack_into(memory, base, self.seq)  # odd: a reader retries
        _TIME.pack_into(memory, base + 8, time.monotonic() if now is None else now)
        self.seq += 1
        _SEQ.pack_into(memory, base, self.seq)

    def silence(self) -> float:
        """Seconds since the master's last stamp; 0.0 if it never stamped (not supervised)."""
        for _ in range(1000):
            seq, stamped = _STAMP.unpack_from(self.memory, self.base)
            if seq & 1 or _SEQ.unpack_from(self.memory, self.base)[0] != seq:
                continue
            return max(0.0, time.monotonic() - stamped) if seq else 0.0
        return 0.0
