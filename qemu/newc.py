# SPDX-License-Identifier: GPL-2.0-only
"""The newc ("070701") cpio writer of the test tooling, as image/src/newc.rs writes it
for the rescue initramfs: owners 0:0, mtime 0, inodes numbered in path order, parents
before children, padded for concatenation. Used by tests/vm/build-initramfs.py and
tests/scenarios/append_cpio.py; also module decompression.

    from newc import Newc, read_module
    c = Newc(); c.dir("bin"); c.file("init", data, 0o755); blob = c.bytes()
"""
from __future__ import annotations

import lzma
import stat
import zlib
from pathlib import Path


class Newc:
    """Entries keyed by path (relative, no leading slash), written sorted."""

    def __init__(self):
        self.entries: dict[str, tuple[int, bytes, tuple[int, int]]] = {}

    def add(self, path: str, mode: int, data: bytes = b"", rdev=(0, 0)):
        self.entries[path.strip("/")] = (mode, data, rdev)

    def dir(self, path: str, perm=0o755):
        self.add(path, stat.S_IFDIR | perm)

    def file(self, path: str, data: bytes, perm=0o644):
        self.add(path, stat.S_IFREG | perm, data)

    def symlink(self, path: str, target: str):
        self.add(path, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, path: str, major: int, minor: int, perm=0o600):
        self.add(path, stat.S_IFCHR | perm, b"", (major, minor))

    def bytes(self, first_ino=1, pad=512) -> bytes:
        """The archive with its trailer, padded to `pad` bytes. Give an archive that
        is appended to another (the kernel unpacks them in order) inode numbers of
        its own with `first_ino`."""
        out = bytearray()
        for i, name in enumerate(sorted(self.entries, key=lambda p: p.split("/"))):
            mode, data, rdev = self.entries[name]
            entry(out, name, mode, data, rdev, first_ino + i)
        entry(out, "TRAILER!!!", 0, b"", (0, 0), 0)
        out.extend(b"\0" * (-len(out) % pad))
        return bytes(out)


def entry(out: bytearray, name: str, mode: int, data: bytes, rdev, ino: int):
    nameb = name.encode() + b"\0"
    nlink = 2 if stat.S_ISDIR(mode) else 1
    fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(nameb), 0)
    out.extend(("070701" + "".join(f"{v:08X}" for v in fields)).encode())
    out.extend(nameb)
    out.extend(b"\0" * (-len(out) % 4))
    out.extend(data)
    out.extend(b"\0" * (-len(out) % 4))


def read_module(path: Path) -> bytes:
    """A module file's bytes, decompressed (.ko, .ko.xz, .ko.gz); zstd is refused."""
    data = Path(path).read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".gz"):
        return zlib.decompress(data, 16 + zlib.MAX_WBITS)
    if path.name.endswith(".zst"):
        raise ValueError(f"{path}: zstd-compressed modules are not supported (python has no zstd)")
    return data
