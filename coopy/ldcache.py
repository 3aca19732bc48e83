"""The dynamic loader's cache (``/etc/ld.so.cache``) and ELF headers, read and written here.

Why coopy writes the cache itself instead of running ``ldconfig`` in the box: the
``host`` image's /etc is read-only, the driver's libraries sit in a directory of their
own (:data:`coopy.gpu.GPU_LIB_DIR`) whose box path exists on no host directory, and
``ldconfig -r`` needs chroot.  The cache is a small, stable format (glibc
``elf/cache.c``, ``sysdeps/generic/dl-cache.h``): a header, fixed-size entries sorted
for a binary search, a string table.  The box gets the host's entries plus the GPU
libraries, so ``dlopen("libcuda.so.1")`` and ``ldconfig -p`` (Triton) find them.

Both layouts are read: ``ld.so-1.7.0`` (old, maybe followed by the new one) and
``glibc-ld.so.cache1.1``; only the new one is written (glibc ≥ 2.32 writes nothing else).
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Iterable
from typing import NamedTuple

OLD_MAGIC = b"ld.so-1.7.0"
NEW_MAGIC = b"glibc-ld.so.cache1.1"
_NEW_HEADER = struct.Struct("<20sIIB3xI12x")  # magic+version, nlibs, len_strings, flags, ext
_NEW_ENTRY = struct.Struct("<iIIIQ")  # flags, key, value, osversion, hwcap
_OLD_ENTRY = 12  # int flags, unsigned key, value
_ENDIAN_FLAG = 2 if sys.byteorder == "little" else 3  # cache_file_new.flags


class Entry(NamedTuple):
    """One cache entry: ``libcuda.so.1`` (flags) → ``/usr/lib/…/libcuda.so.1``."""

    name: str
    flags: int
    path: str
    hwcap: int = 0


def libcmp(a: str, b: str) -> int:
    """glibc's ``_dl_cache_libcmp``: runs of digits compare as numbers (so.10 > so.9)."""
    i = j = 0
    while i < len(a):
        if a[i].isdigit():
            if j >= len(b) or not b[j].isdigit():
                return 1
            si = i
            while i < len(a) and a[i].isdigit():
                i += 1
            sj = j
            while j < len(b) and b[j].isdigit():
                j += 1
            va, vb = int(a[si:i]), int(b[sj:j])
            if va != vb:
                return va - vb
        elif j < len(b) and b[j].isdigit():
            return -1
        elif j >= len(b) or a[i] != b[j]:
            return ord(a[i]) - (ord(b[j]) if j < len(b) else 0)
        else:
            i += 1
            j += 1
    return 0 - (ord(b[j]) if j < len(b) else 0)


def _cstr(data: bytes, offset: int) -> str:
    end = data.find(b"\0", offset)
    return data[offset:end if end >= 0 else len(data)].decode("utf-8", "surrogateescape")


def parse_cache(data: bytes) -> list[Entry]:
    """The entries of a cache file's bytes, in file order; ValueError if it is not one."""
    base = 0
    if data.startswith(OLD_MAGIC):
        (nlibs,) = struct.unpack_from("<I", data, 12)
        base = (16 + nlibs * _OLD_ENTRY + 7) & ~7  # ALIGN_CACHE: the new format follows
        if not data.startswith(NEW_MAGIC, base):  # an old-format-only file
            strings = 16 + nlibs * _OLD_ENTRY
            return [
                Entry(_cstr(data, strings + k), f, _cstr(data, strings + v))
                for f, k, v in (struct.unpack_from("<iII", data, 16 + i * _OLD_ENTRY)
                                for i in range(nlibs))
            ]
    if not data.startswith(NEW_MAGIC, base):
        raise ValueError("not an ld.so cache (no glibc-ld.so.cache1.1 header)")
    _, nlibs, _, _, _ = _NEW_HEADER.unpack_from(data, base)
    first = base + _NEW_HEADER.size
    if first + nlibs * _NEW_ENTRY.size > len(data):
        raise ValueError("truncated ld.so cache")
    out = []
    for i in range(nlibs):
        flags, key, value, _, hwcap = _NEW_ENTRY.unpack_from(data, first + i * _NEW_ENTRY.size)
        out.append(Entry(_cstr(data, base + key), flags, _cstr(data, base + value), hwcap))
    return out


def _sort_key(entries: list[Entry]) -> list[Entry]:
    # ldconfig's compare(): names in descending libcmp order (the loader's binary search
    # goes right when the name sought is smaller), then flags and hwcap descending.
    import functools

    def cmp(x: Entry, y: Entry) -> int:
        res = libcmp(y.name, x.name)
        if res:
            return res
        return (y.flags - x.flags) or (y.hwcap > x.hwcap) - (y.hwcap < x.hwcap)

    return sorted(entries, key=functools.cmp_to_key(cmp))


def build_cache(entries: Iterable[Entry]) -> bytes:
    """A ``glibc-ld.so.cache1.1`` file holding ``entries`` (sorted as ldconfig sorts)."""
    ordered = _sort_key(list(entries))
    strings = bytearray()
    offsets: dict[str, int] = {}
    start = _NEW_HEADER.size + len(ordered) * _NEW_ENTRY.size

    def intern(s: str) -> int:
        if s not in offsets:
            offsets[s] = start + len(strings)
            strings.extend(s.encode("utf-8", "surrogateescape") + b"\0")
        return offsets[s]

    body = b"".join(
        _NEW_ENTRY.pack(e.flags, intern(e.name), intern(e.path), 0, e.hwcap) for e in ordered
    )
    header = _NEW_HEADER.pack(NEW_MAGIC, len(ordered), len(strings), _ENDIAN_FLAG, 0)
    return header + body + bytes(strings)


# ---- ELF: class, machine and DT_SONAME of a shared library -----------------------------


class ElfInfo(NamedTuple):
    """What the loader checks before using a library: word size, machine, SONAME."""

    elf_class: int  # 1: 32-bit, 2: 64-bit
    machine: int  # e_machine (62: x86-64, 183: aarch64)
    soname: str | None


def read_elf(path: str) -> ElfInfo | None:
    """The ELF header facts of a little-endian shared object, or None if it is none."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if len(head) < 52 or head[:4] != b"\x7fELF" or head[5] != 1:
                return None
            cls = head[4]
            (machine,) = struct.unpack_from("<H", head, 18)
            if cls == 2:
                phoff, = struct.unpack_from("<Q", head, 32)
                phentsize, phnum = struct.unpack_from("<HH", head, 54)
                ph, dyn = "<IIQQQQQQ", "<qQ"
            else:
                phoff, = struct.unpack_from("<I", head, 28)
                phentsize, phnum = struct.unpack_from("<HH", head, 42)
                ph, dyn = "<IIIIIIII", "<iI"
            f.seek(phoff)
            table = f.read(phentsize * phnum)
            loads, dynamic = [], None
            for i in range(phnum):
                fields = struct.unpack_from(ph, table, i * phentsize)
                if cls == 2:
                    p_type, _, off, vaddr, _, filesz = fields[:6]
                else:
                    p_type, off, vaddr, _, filesz = fields[:5]
                if p_type == 1:
                    loads.append((vaddr, off, filesz))
                elif p_type == 2:
                    dynamic = (off, filesz)
            if dynamic is None:
                return ElfInfo(cls, machine, None)
            f.seek(dynamic[0])
            raw = f.read(dynamic[1])
            size = struct.calcsize(dyn)
            strtab = soname = None
            for i in range(len(raw) // size):
                tag, val = struct.unpack_from(dyn, raw, i * size)
                if tag == 0:
                    break
                if tag == 5:  # DT_STRTAB (an address)
                    strtab = val
                elif tag == 14:  # DT_SONAME (an offset in the string table)
                    soname = val
            if strtab is None or soname is None:
                return ElfInfo(cls, machine, None)
            for vaddr, off, filesz in loads:
                if vaddr <= strtab < vaddr + filesz:
                    f.seek(strtab - vaddr + off + soname)
                    name = f.read(256).split(b"\0", 1)[0]
                    return ElfInfo(cls, machine, name.decode("utf-8", "replace") or None)
            return ElfInfo(cls, machine, None)
    except (OSError, struct.error):
        return None
