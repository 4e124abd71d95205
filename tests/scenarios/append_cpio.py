#!/usr/bin/env python3
"""Append files to an initramfs as a second cpio newc member (the kernel unpacks
concatenated archives in order):

    append_cpio.py BASE.cpio SRC=/dest/path [SRC=/dest ...] -o OUT

Files get mode 0755, owner 0:0, mtime 0. Parent directories must exist in BASE.
"""
import argparse
import shutil
import sys
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "qemu"))
from newc import Newc  # noqa: E402  (the one newc writer of the test tooling)


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
        c = Newc()
        for spec in a.files:
            src, _, dest = spec.partition("=")
            c.file(dest, Path(src).read_bytes(), 0o755)
        # Inode numbers of its own: the base archive numbers its entries from 1.
        out.write(c.bytes(first_ino=900000, pad=4))
    return 0


if __name__ == "__main__":
    sys.exit(main())
