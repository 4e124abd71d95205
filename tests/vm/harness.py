"""Shared machinery of the paired-VM tests (stdlib unittest + qemu/vmpair.py).

Environment (set by tests/vm/run-cable-tests.sh):
  USB4RESCUE_VM_KERNEL   vmlinuz of the fetched kernel
  USB4RESCUE_VM_INITRD   test initramfs (tests/vm/build-initramfs.py), holding the real
                         thunderbolt modules and usb4vhost
  USB4RESCUE_VM_VHOST_INITRD  the same (test classes whose `initrd_env` names it)
  USB4RESCUE_CABLE_CTL   cable-ctl binary (qemu/cable-ctl)
  USB4RESCUE_KEEP=1      keep the VM logs of passing tests too
"""
from __future__ import annotations

import hashlib
import os
import re
import sys
import time
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent / "qemu"))

import vmpair  # noqa: E402
from vmpair import Disk, Rig, VMError  # noqa: E402,F401

CFS = "/sys/kernel/config/thunderbolt/stream"
TBDEV = "/sys/bus/thunderbolt/devices"
REAL_MODULES = "thunderbolt,thunderbolt_stream"
# Every process a test may leave on a stream: killed before ConfigFS groups are removed (a
# blocking open of a misc device holds misc_mtx, and rmdir would wait for it). The bg jobs
# go first: a reader loop among them would otherwise start a new reader after the killall,
# one that outlives its job (killbg stops a job's own children, not theirs).
STOP_USERS = "killbg; killall -q dd cat tbtest 2>/dev/null || true"
# ... then every group goes, and this waits until thunderbolt_stream holds no group and no
# open file (its module refcount is 0; a stream user that appears meanwhile is killed too).
# A killed reader's last close takes a second (both rings' 500 ms flushes) and its stream
# keeps its HopIDs until then: a group made meanwhile that adopts the same HopIDs from the
# peer shows them without owning them (thunderbolt_stream ignores the EBUSY of its
# allocation when a stream attaches) and frees them once more when it goes, `ida_free`
# WARNs from tbstream_dev_detach_stream (test_11 after test_10's reader loop).
STOP_STREAMS = (f"{STOP_USERS}; rmstreams && waitfor 15 sh -c 'killall -q dd cat tbtest; "
                "m=/sys/module/thunderbolt_stream; [ ! -e $m ] || [ \"$(cat $m/refcnt)\" = 0 ]'")
MiB = 1 << 20


def env_path(name: str) -> str | None:
    v = os.environ.get(name)
    return v if v and Path(v).exists() else None


def initrd_modules(initrd: str) -> set[str]:
    """Module names listed in the initramfs' lib/modules/load.list (read by `image cat`)."""
    try:
        return set(vmpair.image_cat(initrd, "lib/modules/load.list").decode().split())
    except VMError as e:
        log(str(e))
        return set()


def log(msg: str):
    print(f"    {msg}", file=sys.stderr, flush=True)


class VMTestCase(unittest.TestCase):
    """Base: boots VMs once per class (setUpClass), checks kernel logs after every test.

    Subclasses define `vm_names`, `cables` (pairs of VM names) and `noload` (modules not
    to load) and may override boot_extra(). A test that leaves the VMs in an unknown
    state sets self.dirty = True (or fails in reset()): the next test reboots them."""

    vm_names: tuple[str, ...] = ("alpha", "bravo")
    cables: tuple[tuple[str, str], ...] = (("alpha", "bravo"),)
    noload = REAL_MODULES
    needs = ("usb4vhost",)
    initrd_env = "USB4RESCUE_VM_INITRD"
    boot_timeout = 120
    vm_lifetime = 900

    rig: Rig | None = None

    # ---------------------------------------------------------------- class set-up
    @classmethod
    def setUpClass(cls):
        cls.kernel = env_path("USB4RESCUE_VM_KERNEL")
        cls.initrd = env_path(cls.initrd_env)
        if not cls.kernel or not cls.initrd:
            raise unittest.SkipTest(f"USB4RESCUE_VM_KERNEL / {cls.initrd_env} not set "
                                    "(run tests/vm/run-cable-tests.sh)")
        missing = [m for m in cls.needs if m not in initrd_modules(cls.initrd)]
        if missing:
            raise AssertionError(f"the test initramfs lacks {missing} (kmod not built?)")
        cls.rig = Rig()
        cls._dirty = False
        try:
            cls.boot()
        except BaseException:
            cls.rig.failed = True
            cls.rig.close()
            raise

    @classmethod
    def tearDownClass(cls):
        if cls.rig:
            if cls.rig.failed:
                log(f"[{cls.__name__}] VM logs kept in {cls.rig.workdir}")
            cls.rig.close()
            cls.rig = None

    @classmethod
    def boot(cls):
        rig = cls.rig
        cls.boots = getattr(cls, "boots", 0) + 1
        for v in list(rig.vms):
            v.kill()
            # Keep the logs of the VMs being replaced (a failed test's evidence).
            for p in (v.log_path, v.cmd_log_path):
                if p.exists():
                    p.rename(p.with_name(p.name.replace(v.name, f"{v.name}.boot{cls.boots - 1}", 1)))
        for c in list(rig.cables):
            c.remove()
        rig.vms.clear()
        rig.cables.clear()
        cls.vm = {}
        cls.cable = {}
        plugs: dict[str, list] = {n: [] for n in cls.vm_names}
        for x, y in cls.cables:
            c = rig.cable(x[0] + y[0])
            c.create()
            cls.cable[(x, y)] = c
            plugs[x].append((c, "a"))
            plugs[y].append((c, "b"))
        t0 = time.monotonic()
        for n in cls.vm_names:
            v = rig.vm(n)
            append = f"vm.noload={cls.noload}" if cls.noload else ""
            v.start(cls.kernel, cls.initrd, append=append, disks=cls.disks(n),
                    cables=plugs[n], timeout=cls.vm_lifetime)
            cls.vm[n] = v
        for n in cls.vm_names:
            cls.vm[n].wait_ready(cls.boot_timeout)
        cls.boot_seconds = time.monotonic() - t0
        log(f"[{cls.__name__}] {len(cls.vm_names)} VMs ready in {cls.boot_seconds:.1f}s "
            f"({rig.workdir})")
        cls.after_boot()
        cls.log_marks = {n: len(v.log_text()) for n, v in cls.vm.items()}

    @classmethod
    def disks(cls, name: str) -> list[Disk]:
        return []

    @classmethod
    def after_boot(cls):
        pass

    # ---------------------------------------------------------------- per test
    def setUp(self):
        cls = type(self)
        if cls._dirty:
            log("previous test left the VMs in an unknown state: rebooting them")
            cls._dirty = False
            cls.boot()
        self.dirty = False
        self.expect_gone = False   # a test that kills its VMs on purpose sets this
        cls.log_marks = {n: len(v.log_text()) for n, v in cls.vm.items()}
        self.addCleanup(self._after_test)

    def _after_test(self):
        cls = type(self)
        if self.expect_gone:
            cls._dirty = True
            return
        problems = []
        for n, v in cls.vm.items():
            if not v.alive():
                problems.append(f"{n}: VM is gone (panic?):\n{v.tail(30)}")
                continue
            bad = [l for l in v.log_text()[cls.log_marks.get(n, 0):].splitlines()
                   if vmpair.BAD_KERNEL_RE.search(l)]
            try:
                r = v.run("badlog", timeout=30)
                bad += [l for l in r.out.splitlines() if l.strip() and l not in bad]
            except VMError as e:
                problems.append(f"{n}: cannot read dmesg: {e}")
            if bad:
                problems.append(f"{n}: kernel log shows a bug:\n  " + "\n  ".join(bad[:30]))
        if problems:
            cls._dirty = True
            if cls.rig:
                cls.rig.failed = True
            self.fail("\n".join(problems))
        if self.dirty:
            cls._dirty = True
            return
        try:
            self.reset()
        except Exception as e:  # state unknown: reboot before the next test
            cls._dirty = True
            log(f"reset failed ({e}); VMs will be rebooted")

    def reset(self):
        """Bring the VMs back to 'booted, cable plugged, no streams'."""
        for v in self.vm.values():
            v.run(STOP_STREAMS, timeout=30, check=True)

    # ---------------------------------------------------------------- helpers
    def sh(self, name: str, script: str, timeout: float = 60) -> str:
        """Run `script` in VM `name`; fail the test (with its output) unless rc == 0."""
        v = self.vm[name]
        try:
            r = v.run(script, timeout=timeout)
        except VMError:
            self.dirty = True
            raise
        if r.rc != 0:
            self.fail(f"{name}: `{script}` failed (rc={r.rc}):\n{r.out}")
        return r.out

    def rc(self, name: str, script: str, timeout: float = 60) -> tuple[int, str]:
        try:
            r = self.vm[name].run(script, timeout=timeout)
        except VMError:
            self.dirty = True
            raise
        return r.rc, r.out


def sha256_file(path: str | Path, length: int | None = None) -> str:
    h = hashlib.sha256()
    left = length
    with open(path, "rb") as f:
        while left is None or left > 0:
            chunk = f.read(1 << 20 if left is None else min(1 << 20, left))
            if not chunk:
                break
            h.update(chunk)
            if left is not None:
                left -= len(chunk)
    return h.hexdigest()


def make_random_image(path: Path, size: int) -> str:
    """Write `size` random bytes to `path` (once); return their SHA-256."""
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 4 * MiB))
            f.write(chunk)
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def field(out: str, key: str) -> str:
    m = re.search(rf"^@@R {re.escape(key)}=(.*)$", out, re.M)
    if not m:
        raise AssertionError(f"no '@@R {key}=' in output:\n{out}")
    return m.group(1).strip()
