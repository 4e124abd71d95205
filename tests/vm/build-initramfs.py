#!/usr/bin/env python3
"""Build the small busybox initramfs used by the paired-VM cable tests.

    tests/vm/build-initramfs.py --kernel-dir DIR [--ko PATH ...] [--module NAME ...]
                               [--file SRC=DEST ...] [--out FILE]

DIR is what scripts/fetch-kernel.sh prints (vmlinuz + lib/modules/<kver>/). The archive
(cpio newc, uncompressed: the kernel unpacks that fastest) holds:

  /init                tests/vm/guest/init (busybox sh PID 1 with a console command loop)
  /lib/vmlib.sh        tests/vm/guest/vmlib.sh (helpers for the host's commands)
  /bin/busybox         the host's static busybox (Debian package busybox-static)
  /bin/tbtest          tests/vm/guest/tbtest.c built static (gcc): O_NONBLOCK, poll and
                       partial-write checks of /dev/tbstreamN that busybox cannot do
  /lib/modules/*.ko    the modules to load, decompressed, with their dependencies
  /lib/modules/load.list  load order (dependencies first), one module name per line
  /dev/console         so PID 1 has a console before devtmpfs is mounted

Default modules: virtio_blk, configfs, thunderbolt, thunderbolt_stream (from the kernel
tree; configfs is a module in Debian's 7.3 kernel, not built in) and every --ko given
(e.g. usb4vhost.ko), whose dependencies are read from its .modinfo and resolved in
modules.dep. A module whose vermagic does not match the kernel is refused. --file
SRC=DEST adds another executable (e.g. the static rescue as /bin/rescue).

The archive is written by `image pack` (the image crate: the one newc writer, and
modules.dep read through bootfacts); this script gathers the files and names the result.
USB4RESCUE_IMAGE names an `image` binary to use; otherwise it is built with cargo
(qemu/vmpair.py image_tool).

Output: FILE, or by default ${USB4RESCUE_CACHE:-/var/cache/usb4rescue}/initramfs/
vm-test-<kver>-<sha256 prefix>.cpio (named by content, so parallel runs never replace an
image a running VM uses; unused ones are pruned after 2 days). Written atomically and
reproducibly (fixed mtimes, sorted). The path is printed last. Never commit the output.
"""
import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TOP = HERE.parents[1]
sys.path.insert(0, str(TOP / "qemu"))

from vmpair import VMError, image_tool  # noqa: E402

DEFAULT_MODULES = ["virtio_blk", "configfs", "thunderbolt", "thunderbolt_stream"]
DIRS = ["bin", "sbin", "dev", "proc", "sys", "tmp", "run", "root", "etc", "lib",
        "lib/modules", "usr", "usr/bin", "usr/sbin", "mnt"]


def die(msg):
    print(f"build-initramfs: ERROR: {msg}", file=sys.stderr)
    sys.exit(1)


def log(msg):
    print(f"build-initramfs: {msg}", file=sys.stderr)


def build_tbtest(out):
    """tests/vm/guest/tbtest.c, linked static (the initramfs has no libc)."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if not cc:
        die("no C compiler for tests/vm/guest/tbtest.c: apt-get install gcc libc6-dev")
    r = subprocess.run([cc, "-static", "-O2", "-Wall", "-o", str(out),
                        str(HERE / "guest" / "tbtest.c")], capture_output=True, text=True)
    if r.returncode:
        die(f"building tests/vm/guest/tbtest.c failed:\n{r.stderr}")


def kernel_release(kernel_dir):
    mods_root = kernel_dir / "lib" / "modules"
    kvers = [p.name for p in mods_root.iterdir()] if mods_root.is_dir() else []
    if len(kvers) != 1:
        die(f"{mods_root}: expected exactly one <kver> directory, found {kvers} (run scripts/fetch-kernel.sh)")
    if not (mods_root / kvers[0] / "modules.dep").is_file():
        die(f"{mods_root / kvers[0] / 'modules.dep'} missing (fetch-kernel.sh runs depmod; re-run it)")
    return kvers[0]


def pack(a, kver, tmp):
    """Runs `image pack` into tmp/initramfs.cpio; returns its bytes and the load order."""
    bb = a.busybox
    if not bb.is_file():
        die(f"{bb} missing: apt-get install busybox-static")
    head = bb.read_bytes()[:8192]
    if b"/lib64/ld-linux" in head[:4096] or b"ld-linux-x86-64" in head:
        die(f"{bb} is dynamically linked: install busybox-static (apt-get install busybox-static)")
    build_tbtest(tmp / "tbtest")
    (tmp / "hostname").write_text("vm\n")
    try:
        tool = image_tool()
    except VMError as e:
        die(str(e))
    args = [tool, "pack", "--kernel-dir", str(a.kernel_dir), "--kver", kver,
            "-o", str(tmp / "initramfs.cpio"),
            "--exec", f"{bb}=bin/busybox", "--symlink", "bin/sh=busybox",
            "--exec", f"{tmp / 'tbtest'}=bin/tbtest", "--exec", f"{HERE / 'guest' / 'init'}=init",
            "--file", f"{HERE / 'guest' / 'vmlib.sh'}=lib/vmlib.sh",
            "--file", f"{tmp / 'hostname'}=etc/hostname"]
    for d in DIRS:
        args += ["--dir", d]
    for n in a.module or DEFAULT_MODULES:
        args += ["--load", n]
    for ko in a.ko:
        if not ko.is_file():
            die(f"{ko}: no such module file")
        args += ["--load-ko", str(ko)]
    for spec in a.file:
        args += ["--exec", spec]
    r = subprocess.run(args, capture_output=True, text=True)
    if r.returncode:
        die(f"image pack failed: {r.stderr.strip()}")
    said = r.stdout.strip()
    names = said.split("modules in load order: ", 1)[-1].split(";")[0]
    return (tmp / "initramfs.cpio").read_bytes(), names


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 2)[2])
    ap.add_argument("--kernel-dir", required=True, type=Path)
    ap.add_argument("--ko", action="append", default=[], type=Path,
                    help="out-of-tree module to include and load (after its deps)")
    ap.add_argument("--module", action="append", default=None,
                    help=f"in-tree module to load (default: {' '.join(DEFAULT_MODULES)})")
    ap.add_argument("--file", action="append", default=[], metavar="SRC=DEST",
                    help="another executable to add (mode 0755)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--busybox", type=Path, default=Path(shutil.which("busybox") or "/bin/busybox"))
    a = ap.parse_args()

    kver = kernel_release(a.kernel_dir)
    with tempfile.TemporaryDirectory(prefix="build-initramfs.") as tmp:
        blob, names = pack(a, kver, Path(tmp))
    if a.out:
        out = a.out
    else:
        # Named by content: runs in parallel (CI, a developer) never replace each other's
        # image under a running VM. Images unused for 2 days are pruned.
        d = Path(os.environ.get("USB4RESCUE_CACHE", "/var/cache/usb4rescue")) / "initramfs"
        out = d / f"vm-test-{kver}-{hashlib.sha256(blob).hexdigest()[:12]}.cpio"
        if d.is_dir():
            for old in d.glob("vm-test-*.cpio"):
                try:
                    if old != out and time.time() - old.stat().st_mtime > 2 * 86400:
                        old.unlink()
                except FileNotFoundError:
                    pass
        if out.is_file() and out.stat().st_size == len(blob):
            os.utime(out)
            log(f"{out}: unchanged, modules: {names}")
            print(out)
            return
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=".initramfs.")
    with os.fdopen(fd, "wb") as f:
        f.write(blob)
    os.chmod(tmp, 0o644)
    os.replace(tmp, out)
    log(f"{out}: {len(blob) // 1024} KiB, modules: {names}")
    print(out)


if __name__ == "__main__":
    main()
