#!/usr/bin/env python3
"""Build the small busybox initramfs used by the paired-VM cable tests.

    tests/vm/build-initramfs.py --kernel-dir DIR [--ko PATH ...] [--module NAME ...] [--out FILE]

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
modules.dep. A module whose vermagic does not match the kernel is refused.

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
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, str(HERE.parents[1] / "qemu"))
import newc  # noqa: E402  (the one newc writer of the test tooling)
DEFAULT_MODULES = ["virtio_blk", "configfs", "thunderbolt", "thunderbolt_stream"]


def die(msg):
    print(f"build-initramfs: ERROR: {msg}", file=sys.stderr)
    sys.exit(1)


def log(msg):
    print(f"build-initramfs: {msg}", file=sys.stderr)


def modinfo(data):
    """Fields of a module's .modinfo (key=value\\0 strings) found by scanning the ELF."""
    info = {}
    for key in (b"depends=", b"vermagic=", b"name="):
        i = data.find(b"\0" + key)
        if i >= 0:
            j = data.index(b"\0", i + 1)
            info[key[:-1].decode()] = data[i + 1 + len(key):j].decode(errors="replace")
    return info


def read_module(path):
    try:
        return newc.read_module(path)
    except ValueError as e:
        die(str(e))


def modname(path):
    n = path.name
    for suf in (".xz", ".zst", ".gz"):
        if n.endswith(suf):
            n = n[: -len(suf)]
    return n[:-3] if n.endswith(".ko") else n


def build_tbtest():
    """tests/vm/guest/tbtest.c, linked static (the initramfs has no libc)."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if not cc:
        die("no C compiler for tests/vm/guest/tbtest.c: apt-get install gcc libc6-dev")
    with tempfile.TemporaryDirectory(prefix="tbtest.") as d:
        out = Path(d) / "tbtest"
        r = subprocess.run([cc, "-static", "-O2", "-Wall", "-o", str(out),
                            str(HERE / "guest" / "tbtest.c")], capture_output=True, text=True)
        if r.returncode:
            die(f"building tests/vm/guest/tbtest.c failed:\n{r.stderr}")
        return out.read_bytes()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 2)[2])
    ap.add_argument("--kernel-dir", required=True, type=Path)
    ap.add_argument("--ko", action="append", default=[], type=Path,
                    help="out-of-tree module to include and load (after its deps)")
    ap.add_argument("--module", action="append", default=None,
                    help=f"in-tree module to load (default: {' '.join(DEFAULT_MODULES)})")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--busybox", type=Path, default=Path(shutil.which("busybox") or "/bin/busybox"))
    a = ap.parse_args()

    mods_root = a.kernel_dir / "lib" / "modules"
    kvers = [p.name for p in mods_root.iterdir()] if mods_root.is_dir() else []
    if len(kvers) != 1:
        die(f"{mods_root}: expected exactly one <kver> directory, found {kvers} (run scripts/fetch-kernel.sh)")
    kver = kvers[0]
    mdir = mods_root / kver
    dep_file = mdir / "modules.dep"
    if not dep_file.is_file():
        die(f"{dep_file} missing (fetch-kernel.sh runs depmod; re-run it)")

    # modules.dep: "kernel/x/y.ko.xz: dep1 dep2"
    by_name, deps = {}, {}
    for line in dep_file.read_text().splitlines():
        if ":" not in line:
            continue
        m, d = line.split(":", 1)
        p = mdir / m
        n = modname(p)
        by_name[n.replace("-", "_")] = p
        deps[p] = [mdir / x for x in d.split()]
    builtin = set()
    bi = mdir / "modules.builtin"
    if bi.is_file():
        builtin = {modname(Path(x)).replace("-", "_") for x in bi.read_text().split()}

    order, seen = [], set()

    def want(path):  # depth-first, dependencies first
        if path in seen:
            return
        seen.add(path)
        for d in deps.get(path, []):
            want(d)
        order.append(path)

    def want_name(n):
        key = n.replace("-", "_")
        if key in builtin:
            log(f"{n}: built into the kernel")
            return
        if key not in by_name:
            die(f"module {n} not found in {mdir} (not built for this kernel?)")
        want(by_name[key])

    for n in a.module or DEFAULT_MODULES:
        want_name(n)

    extra = []
    for ko in a.ko:
        if not ko.is_file():
            die(f"{ko}: no such module file")
        data = read_module(ko)
        info = modinfo(data)
        vm = info.get("vermagic", "").split(" ")[0]
        if vm and vm != kver:
            die(f"{ko} was built for kernel {vm}, but the VM kernel is {kver}: rebuild it")
        for d in filter(None, info.get("depends", "").split(",")):
            want_name(d)
        extra.append((modname(ko), data))

    c = newc.Newc()
    for d in ("bin", "sbin", "dev", "proc", "sys", "tmp", "run", "root", "etc", "lib",
              "lib/modules", "usr", "usr/bin", "usr/sbin", "mnt"):
        c.dir(d)
    c.chardev("dev/console", 5, 1)
    c.chardev("dev/null", 1, 3, 0o666)
    bb = a.busybox
    if not bb.is_file():
        die(f"{bb} missing: apt-get install busybox-static")
    bbdata = bb.read_bytes()
    if b"/lib64/ld-linux" in bbdata[:4096] or b"ld-linux-x86-64" in bbdata[:8192]:
        die(f"{bb} is dynamically linked: install busybox-static (apt-get install busybox-static)")
    c.file("bin/busybox", bbdata, 0o755)
    c.symlink("bin/sh", "busybox")
    c.file("bin/tbtest", build_tbtest(), 0o755)
    c.file("init", (HERE / "guest" / "init").read_bytes(), 0o755)
    c.file("lib/vmlib.sh", (HERE / "guest" / "vmlib.sh").read_bytes(), 0o644)
    c.file("etc/hostname", b"vm\n")
    names = []
    for p in order:
        n = modname(p)
        c.file(f"lib/modules/{n}.ko", read_module(p))
        names.append(n)
    for n, data in extra:
        c.file(f"lib/modules/{n}.ko", data)
        names.append(n)
    c.file("lib/modules/load.list", ("\n".join(names) + "\n").encode())

    blob = c.bytes()
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
            log(f"{out}: unchanged, modules: {' '.join(names)}")
            print(out)
            return
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=".initramfs.")
    with os.fdopen(fd, "wb") as f:
        f.write(blob)
    os.chmod(tmp, 0o644)
    os.replace(tmp, out)
    log(f"{out}: {len(blob) // 1024} KiB, modules: {' '.join(names)}")
    print(out)


if __name__ == "__main__":
    main()
