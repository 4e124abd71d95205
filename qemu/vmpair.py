#!/usr/bin/env python3
"""vmpair: start 2 or 3 QEMU VMs joined by virtual USB4 cables (usb4vhost; stdlib only).

Library (used by tests/vm/):

    from vmpair import VM, Cable, Disk, Rig
    with Rig() as rig:                              # one work dir, clean-up on exit
        cab = rig.cable("ab")                       # /dev/shm/usb4rescue-<pid>-ab
        a = rig.vm("a"); b = rig.vm("b")
        a.start(kernel, initrd, append="", disks=[Disk("/tmp/a.img", size=64 << 20)],
                cables=[(cab, "a")])
        b.start(kernel, initrd, cables=[(cab, "b")])
        a.wait_for(r"@@READY", 60)                  # regex on the serial log
        print(a.run("cat /proc/version").out)       # guest command loop (tests/vm/guest/init)
        cab.ctl("unplug")                           # qemu/cable-ctl on the shm file

Each VM: q35, TCG (KVM only if USB4RESCUE_KVM=1 *and* a probe boot works: nested KVM
hangs here), 1 vCPU, 512 MiB, no default devices, serial console on a unix socket
(send() types into it; a thread reads it into memory, where wait_for() looks, and into
<workdir>/<name>.log, kept when a run fails), a second serial port (ttyS1, also a socket
+ <name>.cmd.log) for run()'s command channel so kernel messages never mix with command output, virtio-blk disks (raw files; Disk(read_errors=[sector...]) puts blkdebug in
front to fail reads of those sectors with EIO), one ivshmem-plain device per cable.
The kernel command line always gets console=ttyS0 panic=-1 (a panic ends QEMU, with
-no-reboot) and vm.name=<name> (hostname in the test initramfs).

Three VMs: B in the middle gets two cables, one ivshmem device each; usb4vhost makes
one domain per device (domain0, domain1). Which side of each cable a VM takes is the
caller's `usb4vhost.side=<s1>,<s2>...` on the command line (in device order), or
claimed automatically (side=auto) when it passes none.

Clean-up: a VM's QEMU dies with the Python process (PR_SET_PDEATHSIG), is killed on
close()/context exit/atexit/SIGTERM/SIGINT and by its own deadline (timeout=). Cable
shm files are removed the same way; files left by a process killed with SIGKILL are
removed by the next Rig() (cleanup_stale(): shm files of dead PIDs) or by
`vmpair.py cleanup`.

CLI: python3 qemu/vmpair.py --help
"""
from __future__ import annotations

import argparse
import atexit
import base64
import codecs
import ctypes
import itertools
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

QEMU = os.environ.get("USB4RESCUE_QEMU", "qemu-system-x86_64")
SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "usb4rescue-"
DEFAULT_CABLE_SIZE = int(os.environ.get("USB4RESCUE_CABLE_SIZE", str(16 << 20)))
REPO = Path(__file__).resolve().parent.parent

# Kernel log lines that mean a kernel bug; tests fail on any.
BAD_KERNEL_RE = re.compile(
    r"Oops|BUG:|WARNING:|Call Trace|general protection fault|Kernel panic|"
    r"list_del corruption|UBSAN:|KASAN:|refcount_t:|stack-protector"
)

_live: "weakref.WeakSet[VM]" = weakref.WeakSet()
_live_cables: "weakref.WeakSet[Cable]" = weakref.WeakSet()
_live_rigs: "weakref.WeakSet[Rig]" = weakref.WeakSet()


class VMError(RuntimeError):
    pass


class VMTimeout(VMError):
    pass


# --------------------------------------------------------------------------- clean-up

def _cleanup_all():
    for vm in list(_live):
        try:
            vm.kill()
        except Exception:
            pass
    for c in list(_live_cables):
        try:
            c.remove()
        except Exception:
            pass
    for r in list(_live_rigs):
        try:
            r.close()
        except Exception:
            pass


atexit.register(_cleanup_all)
_handlers_installed = False


def install_signal_handlers():
    """SIGTERM/SIGHUP: stop every VM, remove every cable, then raise KeyboardInterrupt (as
    Ctrl-C does) so `finally`/`with` clean-up runs and unittest stops the run (it records
    any other exception, SystemExit included, as a test error and goes on). Main thread."""
    global _handlers_installed
    if _handlers_installed or threading.current_thread() is not threading.main_thread():
        return

    def h(signum, frame):
        _cleanup_all()
        raise KeyboardInterrupt(f"signal {signum}")

    for s in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(s) in (signal.SIG_DFL, None):
            signal.signal(s, h)
    _handlers_installed = True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale(verbose=False) -> list[str]:
    """Remove /dev/shm/usb4rescue-<pid>-* files whose creating process is gone."""
    removed = []
    for p in SHM_DIR.glob(SHM_PREFIX + "*"):
        m = re.match(re.escape(SHM_PREFIX) + r"(\d+)-", p.name)
        if m and not _pid_alive(int(m.group(1))):
            try:
                p.unlink()
                removed.append(str(p))
            except FileNotFoundError:
                pass
    if verbose:
        for r in removed:
            print(f"vmpair: removed stale {r}", file=sys.stderr)
    return removed


def _set_pdeathsig():
    # Runs in the child between fork and exec: the kernel kills QEMU when we die.
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:
        pass


# --------------------------------------------------------------------------- accel

_accel_cache: dict[str, str] = {}


def probe_kvm(kernel: str, timeout: float = 20.0) -> bool:
    """True if /dev/kvm boots `kernel` to its first messages quickly (nested KVM hangs here)."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    with tempfile.TemporaryDirectory(prefix="vmpair-kvm-") as d:
        log = Path(d) / "serial.log"
        cmd = [QEMU, "-nodefaults", "-no-user-config", "-machine", "q35", "-accel", "kvm",
               "-cpu", "host", "-m", "256", "-display", "none", "-no-reboot",
               "-kernel", kernel, "-append", "console=ttyS0 panic=-1",
               "-chardev", f"file,id=c,path={log}", "-serial", "chardev:c"]
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True, preexec_fn=_set_pdeathsig)
        ok = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            txt = log.read_text(errors="replace") if log.exists() else ""
            if "Kernel panic" in txt or "VFS:" in txt or "Run /init" in txt:
                ok = True
                break
            if p.poll() is not None:
                break
            time.sleep(0.2)
        p.kill()
        p.wait()
    return ok


def choose_accel(kernel: str) -> str:
    """'tcg' unless USB4RESCUE_KVM=1 and a probe boot under KVM works ('kvm')."""
    forced = os.environ.get("USB4RESCUE_ACCEL")
    if forced:
        return forced
    if os.environ.get("USB4RESCUE_KVM") != "1":
        return "tcg"
    if kernel not in _accel_cache:
        ok = probe_kvm(kernel)
        if not ok:
            print("vmpair: USB4RESCUE_KVM=1 but a KVM probe boot did not work: using TCG",
                  file=sys.stderr)
        _accel_cache[kernel] = "kvm" if ok else "tcg"
    return _accel_cache[kernel]


# --------------------------------------------------------------------------- tools

def image_tool() -> str:
    """The `image` binary (image/): $USB4RESCUE_IMAGE, else built from this checkout. The
    rigs read kernel modules and initramfs members through it (`image cat`, `image list`),
    so the project's one decompressor (bootfacts) is the only one."""
    if os.environ.get("USB4RESCUE_IMAGE"):
        return os.environ["USB4RESCUE_IMAGE"]
    cargo = shutil.which("cargo") or str(Path.home() / ".cargo" / "bin" / "cargo")
    r = subprocess.run([cargo, "build", "-q", "--release", "-p", "image"], cwd=REPO,
                       stdout=sys.stderr)
    if r.returncode:
        raise VMError("cargo build -p image failed (see above)")
    meta = subprocess.run([cargo, "metadata", "-q", "--format-version", "1", "--no-deps"],
                          cwd=REPO, capture_output=True, text=True, check=True)
    tool = str(Path(json.loads(meta.stdout)["target_directory"]) / "release" / "image")
    os.environ["USB4RESCUE_IMAGE"] = tool   # built once per process
    return tool


def image_cat(*args: str | Path) -> bytes:
    """`image cat FILE [MEMBER]`: a module file decompressed, or a member of an image."""
    r = subprocess.run([image_tool(), "cat", *map(str, args)], capture_output=True)
    if r.returncode:
        raise VMError(f"image cat {' '.join(map(str, args))}: {r.stderr.decode().strip()}")
    return r.stdout


def image_members(image: str | Path) -> list[str]:
    """The regular files of an initramfs, by path, as `image list` reads them."""
    r = subprocess.run([image_tool(), "list", str(image)], capture_output=True, text=True)
    if r.returncode:
        raise VMError(f"image list {image}: {r.stderr.strip()}")
    # "-0644 0:0       1234 lib/x.ko" per file; the last line is the summary.
    return [line.split(None, 3)[3] for line in r.stdout.splitlines()[:-1] if line[:1] == "-"]


# --------------------------------------------------------------------------- cable

def find_cable_ctl() -> str | None:
    """The cable-ctl binary: $USB4RESCUE_CABLE_CTL, PATH, or the workspace's target dir."""
    env = os.environ.get("USB4RESCUE_CABLE_CTL")
    if env:
        return env
    for p in (REPO / "target/release/cable-ctl", REPO / "target/debug/cable-ctl"):
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    return shutil.which("cable-ctl")


class Cable:
    """One virtual cable: a shared-memory file given to two VMs as ivshmem-plain devices."""

    def __init__(self, name: str, size: int = DEFAULT_CABLE_SIZE, cable_ctl: str | None = None,
                 path: str | None = None):
        if size & (size - 1):
            raise ValueError("ivshmem size must be a power of two")
        self.name = name
        self.size = size
        self.path = Path(path) if path else SHM_DIR / f"{SHM_PREFIX}{os.getpid()}-{name}"
        self.cable_ctl = cable_ctl
        self.created = False
        _live_cables.add(self)

    def create(self, init: bool = True):
        """Create the zeroed shm file; then `cable-ctl init --size` if cable-ctl is available."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, self.size)
        finally:
            os.close(fd)
        self.created = True
        ctl = self.cable_ctl or find_cable_ctl()
        if init and ctl:
            self.cable_ctl = ctl
            self.ctl("init", "--size", str(self.size))
        elif init:
            print(f"vmpair: warning: cable-ctl not found (cargo build -p cable-ctl, or set "
                  f"USB4RESCUE_CABLE_CTL): {self.path} is left zeroed and usb4vhost will "
                  f"refuse it as having no header", file=sys.stderr)
        return self

    def ctl(self, *args: str, timeout: float = 30) -> str:
        """Run `cable-ctl --shm PATH ARGS...`; return stdout (raises on failure)."""
        ctl = self.cable_ctl or find_cable_ctl()
        if not ctl:
            raise VMError("cable-ctl not found: build it (cargo build -p cable-ctl) or set USB4RESCUE_CABLE_CTL")
        r = subprocess.run([ctl, "--shm", str(self.path), *args], capture_output=True,
                           text=True, timeout=timeout)
        if r.returncode != 0:
            raise VMError(f"cable-ctl {' '.join(args)} failed (rc={r.returncode}): {r.stderr.strip()}")
        return r.stdout

    def qemu_args(self, dev_id: str) -> list[str]:
        # Which side a VM takes is usb4vhost's side= parameter (the caller's, or auto).
        return [
            "-object", f"memory-backend-file,id={dev_id},share=on,mem-path={self.path},size={self.size}",
            "-device", f"ivshmem-plain,memdev={dev_id},id={dev_id}dev",
        ]

    def remove(self):
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        self.created = False

    def __enter__(self):
        if not self.created:
            self.create()
        return self

    def __exit__(self, *exc):
        self.remove()


# --------------------------------------------------------------------------- disks

@dataclass
class Disk:
    """A raw disk image for a virtio-blk device.

    size: create (sparse) or extend the file to this many bytes if given.
    read_errors: sectors (512 B) whose reads fail with EIO, via QEMU's blkdebug.
    serial: virtio serial (shows in /sys/block/vdX/serial).
    """
    path: str
    size: int | None = None
    read_errors: list[int] = field(default_factory=list)
    serial: str | None = None
    readonly: bool = False

    def prepare(self):
        p = Path(self.path)
        if self.size is not None and (not p.exists() or p.stat().st_size < self.size):
            with open(p, "ab") as f:
                f.truncate(self.size)
        if not p.exists():
            raise VMError(f"disk image {p} does not exist (give Disk(size=...) to create it)")

    def qemu_args(self, idx: int, workdir: Path, vmname: str) -> list[str]:
        self.prepare()
        did = f"disk{idx}"
        ro = ",read-only=on" if self.readonly else ""
        if self.read_errors:
            conf = workdir / f"{vmname}-{did}.blkdebug"
            conf.write_text("".join(
                f'[inject-error]\nevent = "read_aio"\nerrno = "5"\nsector = "{s}"\nonce = "off"\n\n'
                for s in self.read_errors))
            drive = (f"driver=raw,node-name={did},file.driver=blkdebug,file.config={conf},"
                     f"file.image.driver=file,file.image.filename={self.path}{ro}")
            args = ["-blockdev", drive]
        else:
            args = ["-blockdev",
                    f"driver=raw,node-name={did},file.driver=file,file.filename={self.path},"
                    f"file.aio=threads,cache.direct=off,cache.no-flush=on{ro}"]
        serial = f",serial={self.serial}" if self.serial else ""
        return args + ["-device", f"virtio-blk-pci,drive={did}{serial}"]


# --------------------------------------------------------------------------- VM

@dataclass
class Result:
    rc: int
    out: str

    def __bool__(self):
        return self.rc == 0


class _Chan:
    """A serial port: a QEMU unix-socket chardev, read by a thread into memory and into a log
    file. The text comes from the socket, not from QEMU's chardev logfile=: QEMU 7.2 writes
    some bytes twice there ("veriffied") when a write to the socket is partial."""

    def __init__(self, vm: "VM", cid: str, log_path: Path, sock_path: Path):
        self.vm, self.id, self.log_path, self.sock_path = vm, cid, log_path, sock_path
        self.sock: socket.socket | None = None
        self.cursor = 0
        self.lock = threading.Lock()        # send()
        self._text_lock = threading.Lock()  # _text, appended to by the reader
        self._text = ""
        self._reader: threading.Thread | None = None

    def qemu_args(self) -> list[str]:
        # wait=on: QEMU starts the guest only once we are connected, so nothing is lost.
        return ["-chardev", f"socket,id={self.id},path={self.sock_path},server=on,wait=on",
                "-serial", f"chardev:{self.id}"]

    def reset(self):
        for p in (self.log_path, self.sock_path):
            if p.exists():
                p.unlink()
        self.cursor = 0
        self._text = ""

    def connect(self, deadline: float):
        proc = self.vm.proc
        while True:
            if proc.poll() is not None:
                raise VMError(f"{self.vm.name}: QEMU exited at start (rc={proc.returncode}): "
                              f"{self.vm.stderr_text().strip()[-2000:]}")
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(str(self.sock_path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                s.close()
                if time.monotonic() > deadline:
                    raise VMError(f"{self.vm.name}: serial socket {self.sock_path} never appeared")
                time.sleep(0.02)
        self.sock = s
        # Read all the time, so the guest's serial output never stalls.
        self._reader = threading.Thread(target=self._read, args=(s,), daemon=True)
        self._reader.start()

    def _read(self, s: socket.socket):
        dec = codecs.getincrementaldecoder("utf-8")("replace")
        with open(self.log_path, "ab") as log:
            while True:
                try:
                    data = s.recv(65536)
                except OSError:
                    data = b""
                log.write(data)
                log.flush()
                txt = dec.decode(data, final=not data).replace("\r", "")
                with self._text_lock:
                    self._text += txt
                if not data:
                    return

    def close(self):
        if self.sock:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)   # wakes the reader's recv()
            except OSError:
                pass
            if self._reader:
                self._reader.join(5)
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None
        try:
            self.sock_path.unlink()
        except FileNotFoundError:
            pass

    def text(self) -> str:
        """Everything the guest wrote to this port so far, CR removed. Once QEMU is gone,
        waits (briefly) until the reader has taken the socket's last bytes."""
        r = self._reader
        if r and r.is_alive() and not self.vm.alive():
            r.join(5)
        return self._text

    def send(self, data: bytes):
        if not self.sock:
            raise VMError(f"{self.vm.name}: not running")
        with self.lock:
            self.sock.sendall(data)

    def wait_for(self, pat: re.Pattern, timeout: float, start: int | None) -> re.Match:
        pos = self.cursor if start is None else start
        deadline = time.monotonic() + timeout
        while True:
            txt = self.text()
            m = pat.search(txt, pos)
            if m:
                self.cursor = m.end()
                return m
            vm = self.vm
            if not vm.alive():
                why = "lifetime limit" if vm.timed_out else f"rc={vm.proc.returncode if vm.proc else None}"
                raise VMError(f"{vm.name}: QEMU exited ({why}) while waiting for {pat.pattern!r}\n"
                              f"--- last console lines ---\n{vm.tail()}\n--- qemu stderr ---\n"
                              f"{vm.stderr_text()[-1000:]}")
            if time.monotonic() > deadline:
                raise VMTimeout(f"{vm.name}: no {pat.pattern!r} within {timeout}s on {self.log_path.name}\n"
                                f"--- last lines ---\n" + "\n".join(txt.splitlines()[-30:]))
            time.sleep(0.05)


class VM:
    """One QEMU VM with a serial console read from its socket (and logged to a file) and
    typed into by send()."""

    def __init__(self, name: str, workdir: str | Path, memory: int = 512, smp: int = 1,
                 accel: str | None = None, qemu: str = QEMU, extra_args: list[str] | None = None):
        self.name = name
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.memory, self.smp, self.accel, self.qemu = memory, smp, accel, qemu
        self.extra_args = list(extra_args or [])
        self.log_path = self.workdir / f"{name}.log"            # console (ttyS0)
        self.sock_path = self.workdir / f"{name}.sock"
        self.cmd_log_path = self.workdir / f"{name}.cmd.log"    # command channel (ttyS1)
        self.stderr_path = self.workdir / f"{name}.qemu-stderr"
        self.console = _Chan(self, "con0", self.log_path, self.sock_path)
        self.cmdchan = _Chan(self, "cmd0", self.cmd_log_path, self.workdir / f"{name}.cmd.sock")
        self.proc: subprocess.Popen | None = None
        self.cmdline: list[str] = []
        self._deadline_timer: threading.Timer | None = None
        self._cmd_ids = itertools.count(1)
        self.timed_out = False
        _live.add(self)

    # ---- lifecycle
    def start(self, kernel: str, initrd: str | None = None, append: str = "",
              disks: list[Disk] | None = None, cables: list[tuple[Cable, str]] | None = None,
              timeout: float = 900):
        """Boot; `timeout` is the VM's maximum lifetime (seconds) before it is killed."""
        if self.proc:
            raise VMError(f"{self.name}: already started")
        accel = self.accel or choose_accel(kernel)
        for ch in (self.console, self.cmdchan):
            ch.reset()
        cmd = [self.qemu, "-name", self.name, "-nodefaults", "-no-user-config",
               "-machine", "q35", "-accel", accel, "-cpu", "host" if accel == "kvm" else "max",
               "-smp", str(self.smp), "-m", str(self.memory), "-display", "none", "-no-reboot",
               "-kernel", kernel]
        if initrd:
            cmd += ["-initrd", initrd]
        # no_timer_check: a loaded host can make TCG fail the kernel's IO-APIC timer check.
        cmd += ["-append", f"console=ttyS0 panic=-1 no_timer_check loglevel=5 "
                           f"vm.name={self.name} {append}".strip()]
        cmd += self.console.qemu_args() + self.cmdchan.qemu_args()
        for i, d in enumerate(disks or []):
            cmd += d.qemu_args(i, self.workdir, self.name)
        for i, (cable, _side) in enumerate(cables or []):
            if not cable.created:
                cable.create()
            cmd += cable.qemu_args(f"cable{i}")
        cmd += self.extra_args
        self.cmdline = cmd
        (self.workdir / f"{self.name}.cmdline").write_text(shlex.join(cmd) + "\n")
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=err, start_new_session=True,
                                         preexec_fn=_set_pdeathsig)
        try:
            deadline = time.monotonic() + 10
            for ch in (self.console, self.cmdchan):
                ch.connect(deadline)
        except BaseException:
            self.kill()
            raise
        if timeout:
            self._deadline_timer = threading.Timer(timeout, self._deadline)
            self._deadline_timer.daemon = True
            self._deadline_timer.start()
        return self

    def _deadline(self):
        if self.alive():
            self.timed_out = True
            print(f"vmpair: {self.name}: lifetime limit reached, killing QEMU", file=sys.stderr)
            self.kill()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, grace: float = 2.0):
        """Stop QEMU (SIGTERM, then SIGKILL) and close the console. Idempotent."""
        if self._deadline_timer:
            self._deadline_timer.cancel()
        if self.proc and self.proc.poll() is None:
            try:
                self.proc.terminate()
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            except ProcessLookupError:
                pass
        if self.proc:
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        for ch in (self.console, self.cmdchan):
            ch.close()

    close = kill

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()

    # ---- console
    @property
    def cursor(self) -> int:
        return self.console.cursor

    @cursor.setter
    def cursor(self, v: int):
        self.console.cursor = v

    def log_text(self) -> str:
        """The console (ttyS0) log so far, CR removed."""
        return self.console.text()

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def mark(self) -> int:
        """Move the wait_for() cursor to the end of the console log; return it."""
        self.cursor = len(self.log_text())
        return self.cursor

    def wait_for(self, regex: str | re.Pattern, timeout: float = 60, start: int | None = None) -> re.Match:
        """Wait until `regex` matches the console log after the cursor (or `start`).

        Moves the cursor past the match. Raises VMTimeout (with the log's tail) on timeout
        and VMError if QEMU exits first."""
        pat = re.compile(regex) if isinstance(regex, str) else regex
        return self.console.wait_for(pat, timeout, start)

    def send(self, text: str | bytes):
        """Type `text` into the serial console (ttyS0)."""
        self.console.send(text.encode() if isinstance(text, str) else text)

    def wait_ready(self, timeout: float = 120) -> str:
        """Wait for the test initramfs' '@@READY <host> <kver>' line; return the kernel release."""
        m = self.cmdchan.wait_for(re.compile(r"@@READY (\S+) (\S+)"), timeout, None)
        failed = re.findall(r"@@MOD (\S+) FAILED", self.log_text())
        if failed:
            raise VMError(f"{self.name}: modules failed to load: {failed}\n{self.tail()}")
        return m.group(2)

    def run(self, script: str, timeout: float = 60, check: bool = False) -> Result:
        """Run a shell script in the guest's command loop (on ttyS1, see tests/vm/guest/init).

        Returns Result(rc, out). check=True raises VMError on rc != 0. On timeout raises
        VMTimeout: the guest loop is then still busy with the script."""
        cid = f"{os.getpid()}.{next(self._cmd_ids)}"
        b64 = base64.b64encode(script.encode()).decode()
        ch = self.cmdchan
        ch.cursor = len(ch.text())
        ch.send(f"@@X {cid} {b64}\n".encode())
        begin = ch.wait_for(re.compile(rf"@@B {re.escape(cid)}\n"), min(timeout, 30), None)
        end = ch.wait_for(re.compile(rf"@@E {re.escape(cid)} (\d+)\n"), timeout, None)
        out = ch.text()[begin.end():end.start()]
        r = Result(int(end.group(1)), out)
        if check and r.rc != 0:
            raise VMError(f"{self.name}: command failed (rc={r.rc}):\n{script}\n--- output ---\n{out}")
        return r

    def kernel_problems(self) -> list[str]:
        """Serial-log lines that look like a kernel bug (Oops, BUG:, WARNING:, Call Trace...)."""
        return [l for l in self.log_text().splitlines() if BAD_KERNEL_RE.search(l)]


# --------------------------------------------------------------------------- rig

class Rig:
    """A work directory, its VMs and cables; everything is cleaned up on exit."""

    def __init__(self, workdir: str | Path | None = None, keep: bool | None = None,
                 cable_ctl: str | None = None):
        install_signal_handlers()
        cleanup_stale()
        self.own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="vmpair-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.keep = os.environ.get("USB4RESCUE_KEEP") == "1" if keep is None else keep
        self.cable_ctl = cable_ctl
        self.vms: list[VM] = []
        self.cables: list[Cable] = []
        self.failed = False
        _live_rigs.add(self)

    def vm(self, name: str, **kw) -> VM:
        v = VM(name, self.workdir, **kw)
        self.vms.append(v)
        return v

    def cable(self, name: str, size: int = DEFAULT_CABLE_SIZE) -> Cable:
        c = Cable(name, size, cable_ctl=self.cable_ctl)
        self.cables.append(c)
        return c

    def close(self):
        for v in self.vms:
            v.kill()
        for c in self.cables:
            c.remove()
        if self.own_dir and not self.keep and not self.failed:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, etype, *exc):
        if etype is not None:
            self.failed = True
            print(f"vmpair: logs kept in {self.workdir}", file=sys.stderr)
        self.close()


# --------------------------------------------------------------------------- CLI

def _parse_disk(spec: str) -> tuple[str, Disk]:
    # VM=PATH[,size=BYTES][,readerr=S1:S2...][,serial=NAME][,ro]
    vm, _, rest = spec.partition("=")
    parts = rest.split(",")
    d = Disk(parts[0])
    for p in parts[1:]:
        k, _, v = p.partition("=")
        if k == "size":
            d.size = int(v)
        elif k == "readerr":
            d.read_errors = [int(x) for x in v.split(":") if x]
        elif k == "serial":
            d.serial = v
        elif k == "ro":
            d.readonly = True
        else:
            raise SystemExit(f"unknown disk option {k!r} in {spec!r}")
    return vm, d


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="vmpair.py",
        description="Start 2 or 3 VMs joined by virtual USB4 cables (QEMU ivshmem, usb4vhost).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""examples:
  # two VMs (a, b) with one cable, type into a's console (Ctrl-] quits, VMs are stopped):
  vmpair.py up --kernel K/vmlinuz --initrd I.cpio --console a
  # run commands in the test initramfs' command loop, then stop:
  vmpair.py up --kernel K/vmlinuz --initrd I.cpio --run a='ls /sys/bus/thunderbolt/devices'
  # three VMs a-b-c: b has two cables ("ab" as side b, "bc" as side a)
  vmpair.py up --vms 3 ... --console b
  vmpair.py probe-kvm --kernel K/vmlinuz      # does KVM really work here?
  vmpair.py cleanup                           # remove stale /dev/shm/usb4rescue-* files
env: USB4RESCUE_KVM=1 (try KVM), USB4RESCUE_CABLE_CTL, USB4RESCUE_KEEP=1 (keep logs)""")
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start the VMs")
    up.add_argument("--kernel", required=True)
    up.add_argument("--initrd")
    up.add_argument("--append", default="", help="extra kernel command line for every VM")
    up.add_argument("--vms", type=int, choices=(2, 3), default=2)
    up.add_argument("--disk", action="append", default=[], metavar="VM=PATH[,size=N][,readerr=S:S][,serial=X][,ro]")
    up.add_argument("--cable-size", type=int, default=DEFAULT_CABLE_SIZE)
    up.add_argument("--no-cable", action="store_true", help="no ivshmem devices")
    up.add_argument("--timeout", type=float, default=600, help="VM lifetime (s), default 600")
    up.add_argument("--workdir")
    up.add_argument("--console", metavar="VM", help="attach this terminal to VM's serial console")
    up.add_argument("--run", action="append", default=[], metavar="VM=SCRIPT",
                    help="wait for @@READY, run SCRIPT in VM's command loop, print output (repeatable)")
    up.add_argument("--ready-timeout", type=float, default=120)
    pk = sub.add_parser("probe-kvm", help="exit 0 if a KVM boot works")
    pk.add_argument("--kernel", required=True)
    sub.add_parser("cleanup", help="remove stale shm files of dead runs")
    a = ap.parse_args(argv)

    if a.cmd == "cleanup":
        n = cleanup_stale(verbose=True)
        print(f"removed {len(n)} stale file(s)")
        return 0
    if a.cmd == "probe-kvm":
        ok = probe_kvm(a.kernel)
        print("kvm works" if ok else "kvm does not work (use TCG)")
        return 0 if ok else 1

    names = ["a", "b", "c"][: a.vms]
    rc = 0
    with Rig(a.workdir, keep=True) as rig:
        vms = {n: rig.vm(n) for n in names}
        cables: dict[str, list] = {n: [] for n in names}
        if not a.no_cable:
            # a -- b -- c: cable "ab" (a is side a) and cable "bc" (b is side a).
            for x, y in (("a", "b"), ("b", "c"))[: a.vms - 1]:
                c = rig.cable(x + y, a.cable_size)
                cables[x].append((c, "a"))
                cables[y].append((c, "b"))
        disks: dict[str, list] = {n: [] for n in names}
        for spec in a.disk:
            vm, d = _parse_disk(spec)
            disks[vm].append(d)
        for n in names:
            vms[n].start(a.kernel, a.initrd, a.append, disks[n], cables[n], a.timeout)
        print(f"workdir: {rig.workdir}")
        for n in names:
            print(f"  {n}: console socket {vms[n].sock_path}  log {vms[n].log_path}")
        for c in rig.cables:
            print(f"  cable {c.name}: {c.path}")
        sys.stdout.flush()
        for spec in a.run:
            vm, _, script = spec.partition("=")
            v = vms[vm]
            try:
                v.wait_ready(a.ready_timeout)
            except VMError:
                pass
            r = v.run(script, timeout=a.timeout)
            sys.stdout.write(f"--- {vm}: rc={r.rc}\n{r.out}")
            rc = rc or r.rc
        if a.console:
            _interactive(vms[a.console])
        elif not a.run:
            print("VMs running; Ctrl-C stops them")
            try:
                while all(v.alive() for v in vms.values()):
                    time.sleep(0.5)
            except KeyboardInterrupt:
                pass
        for v in vms.values():
            bad = v.kernel_problems()
            if bad:
                print(f"{v.name}: kernel problems in the serial log:\n  " + "\n  ".join(bad[:20]))
                rc = rc or 3
    return rc


def _interactive(vm: VM):
    """Raw terminal <-> serial console socket (Ctrl-] quits)."""
    import select
    import termios
    import tty
    # The console connection is drained by a thread; show the log's new bytes instead.
    fd = sys.stdin.fileno()
    old = termios.tcgetattr(fd) if os.isatty(fd) else None
    pos = 0
    try:
        if old:
            tty.setraw(fd)
        sys.stdout.write("[vmpair: connected to %s, Ctrl-] quits]\r\n" % vm.name)
        sys.stdout.flush()
        while vm.alive():
            r, _, _ = select.select([fd], [], [], 0.05)
            if r:
                data = os.read(fd, 1024)
                if not data or b"\x1d" in data:
                    break
                vm.send(data)
            try:
                with open(vm.log_path, "rb") as f:
                    f.seek(pos)
                    new = f.read()
            except FileNotFoundError:
                new = b""
            if new:
                pos += len(new)
                os.write(sys.stdout.fileno(), new)
    finally:
        if old:
            termios.tcsetattr(fd, termios.TCSADRAIN, old)
        print()


if __name__ == "__main__":
    sys.exit(main())
