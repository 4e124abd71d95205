#!/usr/bin/env python3
"""Append files to an initramfs as a second cpio newc member (the kernel unpacks
concatenated archives in order):

    append_cpio.py BASE.cpio SRC=/dest/path [SRC=/dest ...] -o OUT

Files get mode 0755, owner 0:0, mtime 0. Parent directories must exist in BASE.
"""
import argparse
import shutil
import stat
import sys


def entry(name: str, mode: int, data: bytes, ino: int) -> bytes:
    nb = name.encode() + b"\0"
    hdr = "070701" + "".join(f"{v:08X}" for v in (
        ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nb), 0))
    out = hdr.encode() + nb
    out += b"\0" * (-len(out) % 4)
    out += data
    out += b"\0" * (-len(out) % 4)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("files", nargs="+")
    ap.add_argument("-o", required=True)
    a = ap.parse_args()
    with open(a.o, "wb") as out:
        with open(a.base, "rb") as f:
            shutil.copyfileobj(f, out)
        pos = out.tell()
        out.write(b"\0" * (-pos % 512))  # the next member starts aligned
        blob = b""
        for i, spec in enumerate(a.files):
            src, _, dest = spec.partition("=")
            with open(src, "rb") as f:
                blob += entry(dest.lstrip("/"), stat.S_IFREG | 0o755, f.read(), 900000 + i)
        blob += entry("TRAILER!!!", 0, b"", 0)
        out.write(blob)
    return 0


if __name__ == "__main__":
    sys.exit(main())
