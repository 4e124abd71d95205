#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-only
"""VM tests of the packaging (run by tests/packaging/run.sh, which builds the inputs).

dracut-backup   the dracut initramfs (module usb4rescue + test-only usb4vhost-test) boots
                with rd.usb4rescue=backup ... against a peer VM running `rescue serve`
                (the rescue initramfs of image/), backs the VM's root disk up over the
                virtual cable (usb4vhost under Debian's thunderbolt_stream), then the boot
                continues into the root filesystem's init.
                The stored image must equal the disk byte for byte.
dracut-menu     rd.usb4rescue=menu: the menu on the console, Ctrl-D leaves it, the boot
                continues.
dracut-plain    the same initramfs without rd.usb4rescue: reaches the root's init, no
                usb4rescue output, no Thunderbolt module loaded.
usb-menu        the mkosi USB image boots under OVMF (UEFI) to the rescue menu.
usb-backup      the same image with kernel parameters added at the systemd-boot menu
                backs the machine's disk up to a peer running `rescue serve`.
usb-bios        the same image under SeaBIOS (legacy BIOS, GRUB) reaches rescue (seen on
                the virtual cable: rescue loads usb4vhost and thunderbolt_stream).

Prints "PASS name (Ns)" / "FAIL name (Ns): why" per test; exit status 1 if any failed.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

TOP = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(TOP / "qemu"))
from vmpair import VM, Disk, Rig, VMError, _set_pdeathsig  # noqa: E402

MiB = 1 << 20
BAD_RE = re.compile(r"Oops|BUG:|WARNING:|Call Trace|Kernel panic|general protection")


class Fail(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Fail(msg)


def log(msg):
    print(f"vmtests: {msg}", flush=True)


def run(cmd, **kw):
    kw.setdefault("check", True)
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(4 * MiB):
            h.update(b)
    return h.hexdigest()


def kernel_check(vm):
    bad = [line for line in vm.log_text().splitlines() if BAD_RE.search(line)]
    check(not bad, f"{vm.name}: kernel problems in {vm.log_path}:\n  " + "\n  ".join(bad[:10]))


# ------------------------------------------------------------------ disks

INIT = """#!/bin/busybox sh
# The root filesystem's init in the dracut tests: proves the boot got here.
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
echo "ROOTFS: init reached, root $(/bin/busybox awk '$2 == "/" {print $1, $4}' /proc/mounts)"
echo "ROOTFS: modules: $(/bin/busybox cut -d' ' -f1 /proc/modules | /bin/busybox tr '\\n' ' ')"
echo "ROOTFS: powering off"
/bin/busybox sync
/bin/busybox poweroff -f
"""


def make_root_disk(path: Path, busybox: str, size=48 * MiB):
    """ext4 (label testroot) with a busybox /sbin/init and 8 MiB of random data."""
    tree = Path(tempfile.mkdtemp(prefix="rootfs-", dir=path.parent))
    try:
        for d in ("bin", "sbin", "proc", "sys", "dev", "run", "tmp", "etc", "sysroot", "data"):
            (tree / d).mkdir()
        shutil.copy(busybox, tree / "bin/busybox")
        (tree / "bin/sh").symlink_to("busybox")
        (tree / "sbin/init").write_text(INIT)
        (tree / "sbin/init").chmod(0o755)
        (tree / "etc/os-release").write_text('ID=usb4rescue-test\nNAME="usb4rescue dracut test root"\n')
        (tree / "data/random.bin").write_bytes(os.urandom(8 * MiB))
        if path.exists():
            path.unlink()
        run(["mkfs.ext4", "-q", "-F", "-L", "testroot", "-d", str(tree), str(path), f"{size // 1024}k"])
    finally:
        shutil.rmtree(tree, ignore_errors=True)


def make_store(path: Path, size=256 * MiB):
    if path.exists():
        path.unlink()
    run(["mkfs.ext4", "-q", "-F", "-L", "store", str(path), f"{size // 1024}k"])


def stored_image(w: Path, store: Path, host: str, disk: str) -> Path:
    """The newest <disk>.img of <host> in the store disk (B killed: journal replayed on a copy)."""
    snap = w / "store-snap.img"
    run(["cp", "--sparse=always", str(store), str(snap)])
    r = run(["e2fsck", "-f", "-y", "-E", "journal_only", str(snap)], check=False)
    check(r.returncode in (0, 1, 2), f"e2fsck on the store copy: rc={r.returncode} {r.stderr}")
    out = w / f"dump-{host}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    run(["debugfs", "-R", f"rdump /{host} {out}", str(snap)])
    snap.unlink()
    imgs = sorted((out / host).glob(f"*/{disk}.img"))
    check(imgs, f"no {host}/*/{disk}.img in the store: {sorted(p.relative_to(out) for p in out.rglob('*'))}")
    return imgs[-1]


# ------------------------------------------------------------------ the peer

class Env:
    def __init__(self, a):
        self.a = a
        self.rig = Rig(a.workdir, keep=True, cable_ctl=a.cable_ctl)
        self.w = self.rig.workdir
        self.n = 0

    def vm(self, name, cls=VM, **kw):
        self.n += 1
        v = cls(f"{name}{self.n}", self.w, **kw)
        self.rig.vms.append(v)
        return v

    def peer(self, cable, host="hostb"):
        """B: `rescue serve` (rescue initramfs as PID 1) into an ext4 store, cable side b."""
        store = self.w / f"store{self.n + 1}.img"
        make_store(store)
        b = self.vm("b")
        b.start(self.a.kernel, self.a.peer_initrd,
                f"quiet rescue.mode=serve rescue.store=LABEL=store rescue.hostname={host} usb4vhost.side=b",
                [Disk(str(store))], [(cable, "b")], timeout=self.a.vm_lifetime)
        b.wait_for(r"RESCUE: serve started", 180)
        b.wait_for(r"waiting for a peer", 180)
        return b, store

    def disk_and_peer(self, name, prefix):
        """What a backup test starts from: A's root disk `name` (and its sha256), and
        B serving on a new cable (named by `prefix`), with B's log marked."""
        disk = self.w / name
        make_root_disk(disk, self.a.busybox)
        cable = self.rig.cable(f"{prefix}{os.getpid() % 1000}")
        cable.create()
        b, store = self.peer(cable)
        return disk, sha256(disk), cable, b, store, b.mark()

    def stored_alike(self, vms, store, host, digest, what):
        """Stops the VMs (checking their kernel logs) and checks that B's store holds
        `host`'s vda equal to `what` (whose sha256 is `digest`); returns the image."""
        for v in vms:
            v.kill()
        for v in vms:
            kernel_check(v)
        img = stored_image(self.w, store, host, "vda")
        got = sha256(img)
        check(got == digest, f"stored vda.img sha256 {got} != {what} {digest}")
        return img


# ------------------------------------------------------------------ dracut

def t_dracut_backup(e: Env):
    root, digest, cable, b, store, m0 = e.disk_and_peer("root.img", "d")
    a = e.vm("a", memory=1024)
    t0 = time.monotonic()
    a.start(e.a.kernel, e.a.dracut_initrd,
            "root=/dev/vda ro rd.usb4rescue=backup rd.usb4rescue.fabric=virtual "
            "rd.usb4rescue.hostname=hosta rd.usb4rescue.label=dracut rd.usb4rescue.wait=120 usb4vhost.side=a",
            [Disk(str(root))], [(cable, "a")], timeout=e.a.vm_lifetime)
    a.wait_for(r"usb4rescue: backup started", 300)
    log(f"{a.name}: rescue started {time.monotonic() - t0:.0f}s after power-on")
    m = a.wait_for(r"usb4rescue: backup finished rc=(\d+)", 600)
    check(m.group(1) == "0", f"{a.name}: rescue backup rc={m.group(1)}:\n{a.tail(30)}")
    a.wait_for(r"usb4rescue: continuing the boot", 30)
    log(f"{a.name}: backup done {time.monotonic() - t0:.0f}s after power-on")
    m = a.wait_for(r"ROOTFS: init reached, root (\S+) (\S+)", 300)
    log(f"{a.name}: root's init reached {time.monotonic() - t0:.0f}s after power-on (root {m.group(1)})")
    mods = a.wait_for(r"ROOTFS: modules: (.*)\n", 30).group(1).split()
    check("usb4vhost" in mods and "thunderbolt_stream" in mods and "thunderbolt" not in mods,
          f"{a.name}: modules {mods}: expected Debian's thunderbolt_stream on usb4vhost, without thunderbolt")
    b.wait_for(r"session with .* (ended|failed.*)\n", 120, start=m0)
    a.wait_for(r"ROOTFS: powering off", 30)
    try:
        a.proc.wait(30)
    except subprocess.TimeoutExpired:
        pass
    img = e.stored_alike([a, b], store, "hosta", digest, "root disk")
    sums = (img.parent / "SHA256SUMS").read_text()
    check(digest in sums, f"SHA256SUMS does not hold the disk's digest:\n{sums}")
    log(f"stored {img.relative_to(e.w)} equals the root disk (sha256 {digest[:16]}...)")


def t_dracut_plain(e: Env):
    root = e.w / "root-plain.img"
    make_root_disk(root, e.a.busybox)
    a = e.vm("plain", memory=1024)
    t0 = time.monotonic()
    a.start(e.a.kernel, e.a.dracut_initrd, "root=/dev/vda ro", [Disk(str(root))],
            timeout=e.a.vm_lifetime)
    m = a.wait_for(r"ROOTFS: modules: (.*)\n", 300)
    log(f"{a.name}: root's init reached {time.monotonic() - t0:.0f}s after power-on")
    mods = m.group(1).split()
    a.wait_for(r"ROOTFS: powering off", 30)
    a.kill()
    text = a.log_text()
    check("usb4rescue" not in text and "RESCUE:" not in text,
          "usb4rescue output without rd.usb4rescue:\n" +
          "\n".join(line for line in text.splitlines() if "usb4rescue" in line or "RESCUE" in line))
    for mod in ("thunderbolt", "thunderbolt_stream", "usb4vhost"):
        check(mod not in mods, f"{mod} loaded without rd.usb4rescue (modules: {mods})")
    kernel_check(a)


def t_dracut_menu(e: Env):
    """rd.usb4rescue=menu: the rescue menu on the console; Ctrl-D leaves it and the boot
    goes on to the root filesystem."""
    root = e.w / "root-menu.img"
    make_root_disk(root, e.a.busybox)
    a = e.vm("menu", memory=1024)
    t0 = time.monotonic()
    a.start(e.a.kernel, e.a.dracut_initrd, "root=/dev/vda ro rd.usb4rescue=menu rd.usb4rescue.fabric=usb4",
            [Disk(str(root))], timeout=e.a.vm_lifetime)
    # The prompt, not the "RESCUE: menu" marker: under load the serial log has shown
    # a garbled marker line ("RESCCUE: menu").
    a.wait_for(r"Choice \[1-6\]", 300)
    a.wait_for(r"1\) Back up this machine", 10, start=0)
    log(f"{a.name}: rescue menu {time.monotonic() - t0:.0f}s after power-on")
    mk = a.mark()
    a.send("4\n")  # refresh: the menu reads the console
    a.wait_for(r"Choice \[1-6\]", 60, start=mk)
    a.send("\x04")  # Ctrl-D: leave the menu
    a.wait_for(r"usb4rescue: menu finished rc=0", 60)
    a.wait_for(r"ROOTFS: init reached", 300)
    log(f"{a.name}: left the menu, root's init reached {time.monotonic() - t0:.0f}s after power-on")
    a.wait_for(r"ROOTFS: powering off", 30)
    a.kill()
    kernel_check(a)


# ------------------------------------------------------------------ mkosi image

class UefiVM(VM):
    """A VM that boots a disk image from a USB stick, with OVMF (UEFI) or SeaBIOS, no
    -kernel: the USB stick case."""

    def start_uefi(self, image: str, ovmf: str, cables=(), disks=(), timeout=900, snapshot=True):
        cmd = [self.qemu, "-name", self.name, "-nodefaults", "-no-user-config",
               "-machine", "q35", "-accel", os.environ.get("USB4RESCUE_ACCEL", "tcg"), "-cpu", "max",
               "-smp", "1", "-m", str(self.memory), "-display", "none", "-no-reboot"]
        if ovmf:  # UEFI; without it QEMU's SeaBIOS: legacy BIOS
            cmd += ["-bios", ovmf]
        for ch in (self.console, self.cmdchan):
            ch.reset()
        cmd += self.console.qemu_args() + self.cmdchan.qemu_args()
        # The stick as a USB mass-storage device, as on a real machine.
        cmd += ["-device", "qemu-xhci,id=xhci",
                "-drive", f"if=none,id=stick,format=raw,file={image}" + (",snapshot=on" if snapshot else ""),
                "-device", "usb-storage,bus=xhci.0,drive=stick,removable=on,bootindex=1"]
        for i, d in enumerate(disks):  # the machine's own disks (virtio)
            cmd += d.qemu_args(i, self.workdir, self.name)
        for i, (cable, _side) in enumerate(cables):
            if not cable.created:
                cable.create()
            cmd += cable.qemu_args(f"cable{i}")
        self.cmdline = cmd
        (self.workdir / f"{self.name}.cmdline").write_text(" ".join(cmd) + "\n")
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=err, start_new_session=True, preexec_fn=_set_pdeathsig)
        deadline = time.monotonic() + 10
        for ch in (self.console, self.cmdchan):
            ch.connect(deadline)
        if timeout:
            import threading
            self._deadline_timer = threading.Timer(timeout, self._deadline)
            self._deadline_timer.daemon = True
            self._deadline_timer.start()
        return self


def boot_usb(e: Env, name: str, extra: str, cables=(), disks=()):
    """Boots the USB image and, at the systemd-boot menu, adds `extra` to the kernel
    command line as a person would: 'e' on the entry, the end of the line, the words,
    Enter. `console=ttyS0` is always added: the image's console is the screen."""
    v = e.vm(name, cls=UefiVM, memory=1024)
    t0 = time.monotonic()
    v.start_uefi(e.a.usb_image, e.a.ovmf, cables=cables, disks=disks, timeout=e.a.vm_lifetime)
    v.wait_for(r"Boot in \d+ s", 300)
    v.t_menu = time.monotonic() - t0
    v.send("e")  # systemd-boot's command line editor; the cursor starts at the left
    time.sleep(2)
    for _ in range(100):  # Right arrow to the end of the line (Ctrl-E and End are not
        v.send("\x1b[C")  # understood over OVMF's serial terminal)
        time.sleep(0.03)
    # no_timer_check: a loaded TCG host can fail the kernel's IO-APIC timer check.
    v.send(f" console=ttyS0 no_timer_check {extra}".rstrip())
    time.sleep(1)
    v.send("\r")
    v.t0 = t0
    return v


def t_usb_menu(e: Env):
    v = boot_usb(e, "usb", "")
    m = v.wait_for(r"RESCUE: ready mode=(\S+) host=(\S+) disks=(\S+)", 600)
    dt = time.monotonic() - v.t0
    log(f"{v.name}: systemd-boot menu {v.t_menu:.0f}s, 'RESCUE: ready' {dt:.0f}s after power-on "
        f"(mode={m.group(1)} disks={m.group(3)})")
    check(m.group(1) == "menu", f"mode={m.group(1)}, expected menu")
    v.wait_for(r"Choice \[1-6\]", 60)
    v.wait_for(r"1\) Back up this machine", 10, start=0)
    # The menu answers on the console: refresh it.
    mk = v.mark()
    v.send("4\n")
    v.wait_for(r"Choice \[1-6\]", 60, start=mk)
    v.kill()
    kernel_check(v)


def t_usb_backup(e: Env):
    """The stick backs up the machine's own disk (virtio, an ext4 with data)."""
    disk, digest, cable, b, store, m0 = e.disk_and_peer("internal.img", "u")
    v = boot_usb(e, "usbb",
                 "rescue.mode=backup rescue.disks=vda rescue.fabric=virtual rescue.hostname=stick "
                 "rescue.label=usb usb4vhost.side=a", cables=[(cable, "a")], disks=[Disk(str(disk))])
    m = v.wait_for(r"RESCUE: ready mode=(\S+) host=(\S+) disks=(\S+) fabric=(\S+)", 600)
    log(f"{v.name}: 'RESCUE: ready' {time.monotonic() - v.t0:.0f}s after power-on: "
        f"mode={m.group(1)} disks={m.group(3)} fabric={m.group(4)}")
    check(m.group(1) == "backup", f"mode={m.group(1)}: the added kernel parameters were not used")
    check(m.group(4) == "virtual", f"fabric={m.group(4)}: the virtual cable did not come up")
    m = v.wait_for(r"RESCUE: done rc=(\d+)", 900)
    check(m.group(1) == "0", f"backup rc={m.group(1)}:\n{v.tail(30)}")
    b.wait_for(r"session with .* (ended|failed.*)\n", 120, start=m0)
    log(f"{v.name}: backup of vda done {time.monotonic() - v.t0:.0f}s after power-on")
    img = e.stored_alike([v, b], store, "stick", digest, "the machine's disk")
    log(f"stored {img.relative_to(e.w)} equals the machine's disk")


def t_usb_bios(e: Env):
    """Legacy BIOS (SeaBIOS): GRUB boots the kernel and the rescue initramfs. GRUB and
    the rescue menu use the screen (no serial input under SeaBIOS): the proof that rescue
    runs is on the cable, where rescue's driver set-up (rescue.fabric=auto finds the
    ivshmem device) brings up usb4vhost (and Debian's thunderbolt_stream on it), whose side
    "a" then beats with the hostname rescue chose."""
    cable = e.rig.cable(f"s{os.getpid() % 1000}")
    cable.create()
    v = e.vm("bios", cls=UefiVM, memory=1024)
    t0 = time.monotonic()
    v.start_uefi(e.a.usb_image, None, cables=[(cable, "a")], timeout=e.a.vm_lifetime)
    st = {}
    while time.monotonic() - t0 < 300:
        check(v.alive(), f"{v.name}: QEMU ended:\n{v.tail(20)}\n{v.stderr_text()}")
        st = json.loads(cable.ctl("status", "--json"))
        if any(st[side]["alive"] and st[side]["hostname"] for side in ("a", "b")):
            break
        time.sleep(3)
    else:
        raise Fail(f"{v.name}: usb4vhost never came up within 300 s (cable: {st})\n{v.tail(20)}")
    side = "a" if st["a"]["alive"] else "b"
    log(f"{v.name}: usb4vhost up {time.monotonic() - t0:.0f}s after power-on "
        f"(hostname {st[side]['hostname']!r})")
    v.kill()
    kernel_check(v)


TESTS = [("dracut-backup", t_dracut_backup), ("dracut-plain", t_dracut_plain), ("dracut-menu", t_dracut_menu),
         ("usb-menu", t_usb_menu), ("usb-backup", t_usb_backup), ("usb-bios", t_usb_bios)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernel")
    ap.add_argument("--dracut-initrd")
    ap.add_argument("--peer-initrd")
    ap.add_argument("--usb-image")
    ap.add_argument("--ovmf", default="/usr/share/ovmf/OVMF.fd")
    ap.add_argument("--busybox", default="/bin/busybox")
    ap.add_argument("--cable-ctl")
    ap.add_argument("--workdir")
    ap.add_argument("--only", help="comma-separated test names")
    ap.add_argument("--vm-lifetime", type=float, default=1200)
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    if a.cable_ctl:
        os.environ["USB4RESCUE_CABLE_CTL"] = a.cable_ctl
    a.workdir = Path(a.workdir or tempfile.mkdtemp(prefix="usb4rescue-pkg-"))
    names = a.only.split(",") if a.only else [n for n, _ in TESTS]
    e = Env(a)
    passed = failed = 0
    try:
        for name, fn in TESTS:
            if name not in names:
                continue
            t0 = time.monotonic()
            try:
                fn(e)
                passed += 1
                print(f"PASS {name} ({time.monotonic() - t0:.0f}s)", flush=True)
            except (Fail, VMError, subprocess.SubprocessError, OSError) as ex:
                failed += 1
                print(f"FAIL {name} ({time.monotonic() - t0:.0f}s): {ex}", flush=True)
            except Exception as ex:
                failed += 1
                print(f"FAIL {name}: {type(ex).__name__}: {ex}\n{traceback.format_exc()}", flush=True)
            for v in list(e.rig.vms):
                v.kill()
    finally:
        e.rig.close()
        for p in Path(a.workdir).glob("*.img"):
            p.unlink()
        if failed == 0 and not a.keep:
            shutil.rmtree(a.workdir, ignore_errors=True)
        else:
            print(f"logs in {a.workdir}")
    print(f"vmtests: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
