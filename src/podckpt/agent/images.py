"""Reading the little the agent needs from CRIU's images, without protobuf libraries.

Whether a checkpoint has any page a lazy restore could leave out is in the pagemap images
(`pagemap-PID.img`: entries whose `flags` carry PE_LAZY). CRIU sets PE_LAZY on private
anonymous pages at every dump, except on "the stack": its `is_stack()` compares page *offsets*
(`(sp ^ vaddr) & ~PAGE_MASK`), so a thread whose stack pointer was page-aligned at the dump
(rare: one 16-byte stack position in 256) makes no page of its process lazy, and `criu restore
--lazy-pages` then copies every page itself (lazy.choose restores such a checkpoint in full).

Which tasks were *stopped* when they were dumped is in each task's core image
(`core-PID.img`: `core_entry.tc.task_state == TASK_STOPPED`). The agent must not continue those
after `--leave-stopped` (the application stopped them itself), and CRIU's images are the one
record of that state that no race can make wrong: /proc read before the dump could miss a
SIGSTOP sent between the read and CRIU's freeze.

Format (CRIU 3.x-4.x): a u32 IMG_COMMON_MAGIC, a u32 image magic, then entries of a u32
little-endian size followed by a protobuf message. Only varint and length-delimited fields are
walked; anything unexpected means "unknown" (None), never an exception.
"""

from __future__ import annotations

import re
import struct

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path

IMG_COMMON_MAGIC = 0x54564319
CORE_MAGIC = 0x55053847
PAGEMAP_MAGIC = 0x56084025
PE_LAZY = 1 << 1  # pagemap_entry.flags: the pages may be restored lazily
_PAGEMAP_FLAGS = 4  # pagemap_entry.flags
_PAGEMAP_NAME = re.compile(r"^pagemap-([0-9]+)\.img$")
TASK_STOPPED = 0x03
_CORE_TC = 3  # core_entry.tc (task_core_entry)
_TC_TASK_STATE = 1  # task_core_entry.task_state
_TC_STOP_SIGNO = 21  # task_core_entry.stop_signo: the signal that stopped it
_CORE_NAME = re.compile(r"^core-([0-9]+)\.img$")


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def fields(message: bytes) -> dict[int, int | bytes]:
    """The top-level varint and length-delimited fields of a protobuf message (last wins)."""
    found: dict[int, int | bytes] = {}
    pos = 0
    while pos < len(message):
        tag, pos = _varint(message, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            found[number], pos = _varint(message, pos)
        elif wire == 2:
            length, pos = _varint(message, pos)
            if pos + length > len(message):
                raise ValueError("truncated field")
            found[number] = message[pos : pos + length]
            pos += length
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
    return found


def first_entry(data: bytes, magic: int) -> bytes:
    if len(data) < 12:
        raise ValueError("short image")
    common, image, size = struct.unpack_from("<III", data)
    if common != IMG_COMMON_MAGIC or image != magic or 12 + size > len(data):
        raise ValueError("not the expected image")
    return data[12 : 12 + size]


def task_state(core_image: bytes) -> tuple[int, int] | None:
    """(task_state, stop_signo) of a task's core image (stop_signo 0: not recorded); None
    for a thread's core (no `tc`)."""
    tc = fields(first_entry(core_image, CORE_MAGIC)).get(_CORE_TC)
    if not isinstance(tc, bytes):
        return None
    parsed = fields(tc)
    state, signo = parsed.get(_TC_TASK_STATE), parsed.get(_TC_STOP_SIGNO, 0)
    if not isinstance(state, int) or not isinstance(signo, int):
        return None
    return state, signo


def stopped_tasks(images: Path) -> dict[int, int] | None:
    """PID -> stop signal (0: unknown) of the tasks dumped stopped, from the images; None if
    the images cannot be read (then the caller falls back to what /proc said before the
    dump)."""
    stopped = {}
    try:
        for entry in sorted(images.iterdir()):
            match = _CORE_NAME.match(entry.name)
            if not match:
                continue
            found = task_state(entry.read_bytes())
            if found is not None and found[0] == TASK_STOPPED:
                stopped[int(match[1])] = found[1]
    except (OSError, ValueError):
        return None
    return stopped


def _pagemap_has_lazy(data: bytes) -> bool:
    """Whether one pagemap image (a head, then one entry per run of pages) marks any run lazy."""
    first_entry(data, PAGEMAP_MAGIC)  # checks both magics
    pos = 12 + struct.unpack_from("<I", data, 8)[0]  # past the head (pages_id)
    while pos < len(data):
        if pos + 4 > len(data):
            raise ValueError("truncated entry")
        (size,) = struct.unpack_from("<I", data, pos)
        pos += 4
        if pos + size > len(data):
            raise ValueError("truncated entry")
        flags = fields(data[pos : pos + size]).get(_PAGEMAP_FLAGS, 0)
        if isinstance(flags, int) and flags & PE_LAZY:
            return True
        pos += size
    return False


def has_lazy_pages(images: Path) -> bool | None:
    """Whether any task's pagemap marks pages lazy (the module docstring says when none does);
    None if a pagemap cannot be read (then the caller keeps its choice)."""
    try:
        for entry in sorted(images.iterdir()):
            if _PAGEMAP_NAME.match(entry.name) and _pagemap_has_lazy(entry.read_bytes()):
                return True
    except (OSError, ValueError):
        return None
    return False
