#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Ad-hoc paired-VM rig for usb4vcable (stdlib only; the project's full launcher is
qemu/vmpair.py). Used by kmod/tests/run-tests.py and kmod/bench.sh.

    from vcpair import Rig
    with Rig(size=16 << 20) as rig:
        a = rig.vm("a"); b = rig.vm("b")
        rig.wait_ready()
        rc, out = a.run("ls /sys/bus/thunderbolt/devices")
        rig.ctl("unplug")

Environment: KVER / KERNEL_DIR (default: the newest
${USB4RESCUE_CACHE:-/var/cache/usb4rescue}/kernel/<kver>/ made by scripts/fetch-kernel.sh),
KO (usb4vcable.ko, default ${USB4RESCUE_CACHE}/kmod/<kver>/usb4vcable.ko), SMP (vCPUs, 1),
CABLE_CTL (default: cargo build output in /tmp/target-kmod or target/).
"""
import base64
import glob
import lzma
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CACHE = Path(os.environ.get("USB4RESCUE_CACHE", "/var/cache/usb4rescue"))


def kernel_dir():
    if os.environ.get("KERNEL_DIR"):
        return Path(os.environ["KERNEL_DIR"])
    dirs = sorted(CACHE.glob("kernel/*/vmlinuz"))
    if not dirs:
        sys.exit("no kernel: run scripts/fetch-kernel.sh or set KERNEL_DIR")
    return dirs[-1].parent


def cable_ctl():
    if os.environ.get("CABLE_CTL"):
        return os.environ["CABLE_CTL"]
    for p in ("/tmp/target-kmod/debug/cable-ctl", str(REPO / "target/debug/cable-ctl")):
        if os.path.exists(p):
            return p
    sys.exit("cable-ctl not built: CARGO_TARGET_DIR=/tmp/target-kmod cargo build -p cable-ctl")


def build_initramfs(kdir, ko, out, extra=()):
    kver = kdir.name
    root = Path(tempfile.mkdtemp(prefix="vcinitrd."))
    try:
        for d in ("bin", "lib/modules", "dev", "proc", "sys", "tmp"):
            (root / d).mkdir(parents=True, exist_ok=True)
        shutil.copy("/bin/busybox", root / "bin/busybox")
        shutil.copy(HERE / "guest-init.sh", root / "init")
        os.chmod(root / "init", 0o755)
        cfs = kdir / f"lib/modules/{kver}/kernel/fs/configfs/configfs.ko.xz"
        (root / "lib/modules/configfs.ko").write_bytes(lzma.decompress(cfs.read_bytes()))
        shutil.copy(ko, root / "lib/modules/usb4vcable.ko")
        tbk = kdir / f"lib/modules/{kver}/kernel/drivers/thunderbolt/thunderbolt.ko.xz"
        if tbk.exists():
            (root / "lib/modules/thunderbolt.ko").write_bytes(lzma.decompress(tbk.read_bytes()))
        tb = Path("/tmp/tbtest")
        subprocess.run(["gcc", "-static", "-O2", "-o", str(tb), str(HERE / "tbtest.c")], check=True)
        shutil.copy(tb, root / "bin/tbtest")
        for src, dst in extra:
            shutil.copy(src, root / dst)
        files = subprocess.run("find . | sort", shell=True, cwd=root, check=True,
                               capture_output=True).stdout
        with open(out, "wb") as f:
            subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=root, input=files,
                           stdout=f, check=True)
    finally:
        shutil.rmtree(root)
    return out


class VM:
    def __init__(self, rig, name, params="", cables=None, mem=512):
        self.rig, self.name = rig, name
        self.log = rig.dir / f"{name}.log"
        self.sock = rig.dir / f"{name}.sock"
        cmd = [os.environ.get("QEMU", "qemu-system-x86_64"), "-accel", "tcg", "-m", str(mem),
               "-nographic", "-no-reboot", "-nodefaults", "-smp", os.environ.get("SMP", "1"), "-kernel", str(rig.kernel),
               "-initrd", str(rig.initrd),
               "-append", f"console=ttyS0 panic=-1 no_timer_check loglevel=7 vc.name={name} {params}",
               "-serial", f"file:{self.log}",
               "-chardev", f"socket,id=cmd,path={self.sock},server=on,wait=off",
               "-serial", "chardev:cmd"]
        for i, path in enumerate(cables if cables is not None else [rig.shm]):
            cmd += ["-object", f"memory-backend-file,id=shm{i},share=on,mem-path={path},"
                    f"size={rig.size}", "-device", f"ivshmem-plain,memdev=shm{i}"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                     stdout=open(rig.dir / f"{name}.qemu.out", "w"),
                                     stderr=subprocess.STDOUT)
        self.conn = None
        self.buf = b""
        self.seq = 0

    def console(self):
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for(self, text, timeout=60):
        end = time.time() + timeout
        while time.time() < end:
            if text in self.console():
                return True
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name}: QEMU exited\n{self.console()[-3000:]}")
            time.sleep(0.1)
        raise RuntimeError(f"{self.name}: timeout waiting for {text!r}\n{self.console()[-3000:]}")

    def _connect(self):
        if self.conn is None:
            for _ in range(100):
                try:
                    self.conn = socket.socket(socket.AF_UNIX)
                    self.conn.connect(str(self.sock))
                    break
                except OSError:
                    self.conn = None
                    time.sleep(0.1)

    def run(self, script, timeout=120, check=False):
        """Run a shell script in the guest; return (rc, output)."""
        self._connect()
        self.seq += 1
        sid = f"{self.seq}"
        b64 = base64.b64encode(script.encode()).decode()
        self.conn.sendall(f"@@X {sid} {b64}\n".encode())
        end = time.time() + timeout
        begin, endtag = f"@@B {sid}\n".encode(), f"@@E {sid} ".encode()
        self.conn.settimeout(0.5)
        while time.time() < end:
            i = self.buf.find(endtag)
            if i >= 0:
                j = self.buf.find(b"\n", i)
                if j >= 0:
                    rc = int(self.buf[i + len(endtag):j])
                    k = self.buf.find(begin)
                    out = self.buf[k + len(begin):i].decode(errors="replace") if k >= 0 else ""
                    self.buf = self.buf[j + 1:]
                    if check and rc:
                        raise RuntimeError(f"{self.name}: rc={rc}: {script}\n{out}")
                    return rc, out
            try:
                d = self.conn.recv(65536)
                if not d:
                    raise RuntimeError(f"{self.name}: command channel closed")
                self.buf += d
            except socket.timeout:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name}: QEMU exited\n{self.console()[-3000:]}")
        raise RuntimeError(f"{self.name}: timeout running {script!r}")

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.conn:
            self.conn.close()
            self.conn = None
        self.buf = b""

    def bad_dmesg(self):
        """Lines of the console that show an oops, WARN, BUG or stuck task."""
        bad = ("Oops", "WARNING:", "BUG:", "Call Trace", "blocked for more than",
               "general protection", "kernel panic", "Kernel panic", "objects leaked")
        return [l for l in self.console().splitlines() if any(b in l for b in bad)]


class Rig:
    def __init__(self, size=16 << 20, shm=None, channels=8):
        self.kdir = kernel_dir()
        self.kernel = self.kdir / "vmlinuz"
        kver = self.kdir.name
        self.ko = Path(os.environ.get("KO", CACHE / f"kmod/{kver}/usb4vcable.ko"))
        self.dir = Path(tempfile.mkdtemp(prefix="vcpair."))
        self.initrd = build_initramfs(self.kdir, self.ko, self.dir / "initrd.cpio")
        self.size = size
        self.shm = shm or f"/dev/shm/usb4vc-test-{os.getpid()}"
        self.ctl_bin = cable_ctl()
        self.ctl("init", "--size", str(size), "--channels", str(channels))
        self.vms = []

    def ctl(self, *args, shm=None):
        r = subprocess.run([self.ctl_bin, "--shm", shm or self.shm, *args],
                           capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"cable-ctl {args}: {r.stderr}")
        return r.stdout

    def vm(self, name, params="", cables=None):
        v = VM(self, name, params, cables)
        self.vms.append(v)
        return v

    def wait_ready(self, timeout=90):
        for v in self.vms:
            v.wait_for("@@READY", timeout)

    def close(self):
        for v in self.vms:
            v.kill()
        if os.environ.get("KEEP"):
            print(f"logs kept in {self.dir}", file=sys.stderr)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)
        for p in glob.glob(f"/dev/shm/usb4vc-test-{os.getpid()}*"):
            os.unlink(p)

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()
