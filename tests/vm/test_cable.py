#!/usr/bin/env python3
"""Paired-VM tests: the real driver alone, and the cable tests test_vhost.py and
test_robust.py run on the virtual USB4 host (usb4vhost.ko + cable-ctl).

Run everything with tests/vm/run-cable-tests.sh (it builds what is needed). Directly:
    USB4RESCUE_VM_KERNEL=... USB4RESCUE_VM_INITRD=... USB4RESCUE_CABLE_CTL=... \\
        python3 tests/vm/test_cable.py [-k PATTERN] [-v]

Classes (one VM boot per class; see tests/vm/README.md for what each test checks):
  RealDriverTest  one VM with Debian's own thunderbolt + thunderbolt_stream modules:
                  the fetched kernel works, and the ConfigFS errno checks hold for the
                  upstream driver (the reference the virtual cable must match).
  CableTest       alpha (side a) and bravo (side b) joined by one cable; run as
                  test_vhost.py's VhostCableTest on usb4vhost + thunderbolt_stream.
  ChainTest       alpha - bravo - charlie, bravo with two cables; run as
                  test_robust.py's VhostChainTest.
Only RealDriverTest runs from here: the cable classes are bases (usb4vcable, the
re-implementation they were first written against, is deleted).
Every test fails if a guest's kernel log shows Oops / BUG: / WARNING: / Call Trace.
"""
from __future__ import annotations

import re
import sys
import time
import unittest
from pathlib import Path

sys.dont_write_bytecode = True   # no __pycache__ in the source tree
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (CFS, MiB, TBDEV, Disk, VMTestCase, field, log,  # noqa: E402
                     make_random_image, sha256_file)

ENXIO_TEXT = "No such device or address"
EINVAL_TEXT = "Invalid argument"


# ----------------------------------------------------------------------------- ConfigFS
def check_configfs_errnos(t: VMTestCase, vm: str):
    """ConfigFS errors of the USB4STREAM tree (same expectations for both drivers)."""
    conn = "0-1.0"
    cases = [
        (f"mk {CFS}/foo", "ERR Invalid argument", "connection name not %u-%llx.%u"),
        (f"mk {CFS}/0-1", "ERR Invalid argument", "connection name without .service"),
        (f"mk {CFS}/x-1.0", "ERR Invalid argument", "connection name with a bad domain"),
        (f"mk {CFS}/{conn}", "ok", "connection before the cable is used"),
        (f"mk {CFS}/{conn}/abcdefghi", "ERR File name too long", "stream name of 9 chars"),
        (f"mk {CFS}/{conn}/abcdefgh", "ok", "stream name of 8 chars"),
        (f"wr {CFS}/{conn}/abcdefgh/ring_size 31", "ERR Invalid argument", "ring_size 31"),
        (f"wr {CFS}/{conn}/abcdefgh/ring_size 4097", "ERR Invalid argument", "ring_size 4097"),
        (f"wr {CFS}/{conn}/abcdefgh/ring_size 0", "ERR Invalid argument", "ring_size 0"),
        (f"wr {CFS}/{conn}/abcdefgh/ring_size 32", "ok", "ring_size 32"),
        (f"wr {CFS}/{conn}/abcdefgh/ring_size 4096", "ok", "ring_size 4096"),
        (f"wr {CFS}/{conn}/abcdefgh/ring_size abc", "ERR Invalid argument", "ring_size not a number"),
        (f"wr {CFS}/{conn}/abcdefgh/throttling 16776961", "ERR Invalid argument", "throttling too big"),
        (f"wr {CFS}/{conn}/abcdefgh/throttling 16776960", "ok", "throttling max"),
    ]
    script = "\n".join(f'echo "@@C {i} $({cmd})"' for i, (cmd, _, _) in enumerate(cases))
    script += f"""
echo "@@R ring_size=$(cat {CFS}/{conn}/abcdefgh/ring_size)"
echo "@@R throttling=$(cat {CFS}/{conn}/abcdefgh/throttling)"
echo "@@R index=$(cat {CFS}/{conn}/abcdefgh/index)"
ls /dev/tbstream$(cat {CFS}/{conn}/abcdefgh/index) >/dev/null && echo "@@R devnode=yes"
"""
    out = t.sh(vm, script)
    got = dict(re.findall(r"^@@C (\d+) (.*)$", out, re.M))
    errors = []
    for i, (cmd, want, what) in enumerate(cases):
        g = got.get(str(i), "<no output>").strip()
        if g != want:
            errors.append(f"{what}: `{cmd}` gave {g!r}, expected {want!r}")
    t.assertFalse(errors, "\n".join(errors))
    t.assertEqual(field(out, "ring_size"), "4096")
    t.assertEqual(field(out, "throttling"), "16776960")
    t.assertEqual(field(out, "devnode"), "yes", "/dev/tbstreamN missing after mkdir")
    t.sh(vm, "rmstreams")


class RealDriverTest(VMTestCase):
    """Debian's thunderbolt + thunderbolt_stream in one VM (no cable: no peer ever)."""

    vm_names = ("solo",)
    cables = ()
    noload = "usb4vhost"
    needs = ("thunderbolt", "thunderbolt_stream", "configfs")

    def test_01_modules_and_tree(self):
        out = self.sh("solo", f"""
for m in configfs thunderbolt thunderbolt_stream; do
    [ -d /sys/module/$m ] && echo "@@R $m=loaded" || echo "@@R $m=missing"
done
[ -d {CFS} ] && echo "@@R cfs=yes"
[ -d /sys/bus/thunderbolt ] && echo "@@R bus=yes"
echo "@@R kver=$(uname -r)"
echo "@@R devices=$(ls {TBDEV} | tr '\\n' ' ')"
""")
        for m in ("configfs", "thunderbolt", "thunderbolt_stream"):
            self.assertEqual(field(out, m), "loaded", f"{m} not loaded")
        self.assertEqual(field(out, "cfs"), "yes")
        self.assertEqual(field(out, "bus"), "yes")
        log(f"kernel {field(out, 'kver')}, boot to command loop {self.boot_seconds:.1f}s, "
            f"thunderbolt devices: {field(out, 'devices') or '(none: no USB4 hardware)'}")

    def test_02_configfs_errnos(self):
        check_configfs_errnos(self, "solo")

    @classmethod
    def disks(cls, name):
        # vdb: 1 MiB whose sector 100 fails reads with EIO (blkdebug), for test_03.
        return [Disk(str(cls.rig.workdir / "solo-bad.img"), size=MiB, read_errors=[100])]

    def test_03_rig_console_and_blkdebug(self):
        """vmpair itself: typing into the console shell, and blkdebug read errors."""
        v = self.vm["solo"]
        v.mark()
        v.send("echo console-$((6 * 7))\n")
        v.wait_for(r"console-42", 20)
        out = self.sh("solo", """
# page-cache reads: 4 KiB pages, so sectors 96..103 share sector 100's fate
dd if=/dev/vda of=/dev/null bs=512 count=96 2>/dev/null && echo "@@R before=ok"
dd if=/dev/vda of=/dev/null bs=512 skip=104 count=8 2>/dev/null && echo "@@R after=ok"
dd if=/dev/vda of=/dev/null bs=512 skip=100 count=1 2>&1 | tail -1 | sed 's/^/@@R bad=/'
""")
        self.assertEqual(field(out, "before"), "ok")
        self.assertEqual(field(out, "after"), "ok")
        self.assertIn("Input/output error", field(out, "bad"))

    def test_09_panic_ends_qemu(self):
        """panic=-1 + -no-reboot: a guest panic ends QEMU, and the harness sees it."""
        v = self.vm["solo"]
        v.send("echo c > /proc/sysrq-trigger\n")
        deadline = time.monotonic() + 60
        while v.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        self.assertFalse(v.alive(), "QEMU still running 60 s after a guest panic")
        self.assertTrue(any("Kernel panic" in l for l in v.kernel_problems()),
                        "no 'Kernel panic' in the console log")
        self.expect_gone = True


# ----------------------------------------------------------------------------- cable
class CableTest(VMTestCase):
    """alpha (side a) -- cable -- bravo (side b). alpha's vda: 64 MiB of random data;
    bravo's vda: 64 MiB blank (received data lands there so the host can compare)."""

    vm_names = ("alpha", "bravo")
    cables = (("alpha", "bravo"),)
    data_size = 64 * MiB

    @classmethod
    def disks(cls, name):
        wd = cls.rig.workdir
        if name == "alpha":
            img = wd / "alpha-data.img"
            if not img.exists():
                cls.data_sha = make_random_image(img, cls.data_size)
                cls.data_img = img
            return [Disk(str(img), serial="data")]
        img = wd / f"{name}-recv.img"
        cls.recv_img = img
        return [Disk(str(img), size=cls.data_size, serial="recv")]

    @classmethod
    def after_boot(cls):
        cls.svc = {}
        for n, v in cls.vm.items():
            r = v.run("linkwait 60", timeout=90)
            if r.rc != 0:
                raise AssertionError(f"{n}: no stream service appeared (link down?):\n{r.out}\n"
                                     f"--- console ---\n{v.tail(30)}")
            cls.svc[n] = r.out.strip().splitlines()[-1]

    def reset(self):
        c = self.cable[("alpha", "bravo")]
        c.ctl("plug")
        c.ctl("rate", "--bytes-per-sec", "0")
        super().reset()
        for n, v in self.vm.items():
            r = v.run("linkwait 30", timeout=60)
            if r.rc != 0:
                raise AssertionError(f"{n}: link not back after reset")

    # ---- helpers
    def streams(self, name="backup", receiver="bravo", sender="alpha"):
        """Upstream order: receiver with -1 HopIDs, then sender without (it must adopt the
        receiver's HopIDs, reversed, at once); -> (idx_rx, idx_tx)."""
        out = self.sh(receiver, f"mkstream {self.svc[receiver]} {name} -1 -1")
        irx, in_r, out_r = map(int, out.split()[-3:])
        self.assertGreaterEqual(in_r, 8, out)
        self.assertGreaterEqual(out_r, 8, out)
        out = self.sh(sender, f"mkstream {self.svc[sender]} {name}")
        itx, in_s, out_s = map(int, out.split()[-3:])
        self.assertEqual((in_s, out_s), (out_r, in_r), "sender did not adopt the receiver's HopIDs")
        return irx, itx

    def start_reader(self, vm, job, idx, dest, bs="256k"):
        self.sh(vm, f"bg {job} dd if=/dev/tbstream{idx} of={dest} bs={bs}; "
                    f"waitopen /dev/tbstream{idx} 10")

    def recv_sha(self, vm, job, path, length, timeout=120):
        out = self.sh(vm, f"""bgwait {job} {timeout} || exit $?
sync
echo "@@R sha=$(head -c {length} {path} | sha256sum | cut -d' ' -f1)"
""", timeout=timeout + 60)
        return field(out, "sha")

    # ---- tests
    def test_01_upstream_example(self):
        """Receiver: -1 HopIDs + dd if=/dev/tbstreamN; sender: no HopIDs + dd of=; 64 MiB."""
        irx, itx = self.streams("backup")
        self.start_reader("bravo", "rx", irx, "/dev/vda")
        t0 = time.monotonic()
        out = self.sh("alpha", f"""t0=$(now)
dd if=/dev/vda of=/dev/tbstream{itx} bs=256k || exit 1
echo "@@R dt=$(echo "$t0 $(now)" | awk '{{print $2 - $1}}')"
""", timeout=600)
        rx_sha = self.recv_sha("bravo", "rx", "/dev/vda", self.data_size, timeout=300)
        dt = time.monotonic() - t0
        dd_dt = max(float(field(out, "dt")), 0.01)
        tx_sha = field(self.sh("alpha", 'echo "@@R sha=$(sha256sum /dev/vda | cut -d" " -f1)"'), "sha")
        log(f"64 MiB alpha -> bravo: sender's dd {dd_dt:.1f}s ({self.data_size / MiB / dd_dt:.1f} MiB/s), "
            f"{dt:.1f}s until the receiver's SHA-256 was known")
        self.assertEqual(tx_sha, self.data_sha, "sender's disk does not read back as written")
        self.assertEqual(rx_sha, self.data_sha, "received data differs from sent data")
        self.assertEqual(sha256_file(self.recv_img, self.data_size), self.data_sha,
                         "bravo's disk image (host view) differs")

    def test_02_reverse_order(self):
        """Sender first without HopIDs: stays 0, open gives EINVAL; re-created after the
        receiver published its HopIDs, it adopts them and the transfer works."""
        sa, sb = self.svc["alpha"], self.svc["bravo"]
        out = self.sh("alpha", f"mkstream {sa} rev")
        itx, i0, o0 = map(int, out.split()[-3:])
        self.assertEqual((i0, o0), (0, 0), "sender made first must have no HopIDs")
        rc, out = self.rc("alpha", f"dd if=/dev/zero of=/dev/tbstream{itx} bs=4k count=1")
        self.assertNotEqual(rc, 0)
        self.assertIn(EINVAL_TEXT, out, "open with unset HopIDs must fail with EINVAL")
        out = self.sh("bravo", f"mkstream {sb} rev -1 -1")
        irx, in_r, out_r = map(int, out.split()[-3:])
        out = self.sh("alpha", f"usleep 500000; streaminfo {sa} rev")
        self.assertEqual(tuple(map(int, out.split()[-2:])), (0, 0),
                         "HopIDs are looked up at attach time only (upstream): expected still 0")
        self.sh("alpha", f"rmdir {CFS}/{sa}/rev")
        out = self.sh("alpha", f"mkstream {sa} rev")
        itx, in_s, out_s = map(int, out.split()[-3:])
        self.assertEqual((in_s, out_s), (out_r, in_r), "re-created sender did not adopt HopIDs")
        self.start_reader("bravo", "rx", irx, "/tmp/rx")
        self.sh("alpha", f"dd if=/dev/vda of=/dev/tbstream{itx} bs=256k count=4")
        self.assertEqual(self.recv_sha("bravo", "rx", "/tmp/rx", 1 * MiB),
                         sha256_file(self.data_img, 1 * MiB))

    def test_03_eof_on_close(self):
        """The reader gets EOF when the writer's last fd closes, once per open/close cycle."""
        irx, itx = self.streams("eof")
        for i in (1, 2, 3):
            self.sh("bravo", f"bg rx{i} cat /dev/tbstream{irx}; waitopen /dev/tbstream{irx} 10")
            self.sh("alpha", f"printf 'cycle-{i}' > /dev/tbstream{itx}")
            rc, out = self.rc("bravo", f"bgwait rx{i} 20")
            self.assertEqual(rc, 0, f"cycle {i}: reader did not get EOF after the writer closed:\n{out}")
            self.assertEqual(out.strip(), f"cycle-{i}")

    def test_04_two_streams(self):
        """A control stream (bravo -> alpha) and a data stream (alpha -> bravo) at once."""
        ictl_b, ictl_a = self.streams("ctrl")
        idat_b, idat_a = self.streams("data")
        self.assertNotEqual(ictl_a, idat_a)
        self.start_reader("bravo", "rxdata", idat_b, "/tmp/rxdata")
        self.start_reader("alpha", "rxctl", ictl_a, "/tmp/rxctl", bs="4k")
        self.sh("alpha", f"bg txdata dd if=/dev/vda of=/dev/tbstream{idat_a} bs=256k count=64")
        msg = "control-message-from-bravo"
        self.sh("bravo", f"echo {msg} > /dev/tbstream{ictl_b}")
        out = self.sh("alpha", "bgwait rxctl 30 >/dev/null && cat /tmp/rxctl")
        self.assertEqual(out.strip(), msg)
        self.sh("alpha", "bgwait txdata 300", timeout=360)
        self.assertEqual(self.recv_sha("bravo", "rxdata", "/tmp/rxdata", 16 * MiB),
                         sha256_file(self.data_img, 16 * MiB))

    def test_05_corrupted_frames(self):
        """cable-ctl corrupt: the frames arrive (counted, same length) with wrong bytes."""
        n = 3
        size = 2 * MiB
        irx, itx = self.streams("corrupt")
        c = self.cable[("alpha", "bravo")]
        c.ctl("corrupt", "--dir", "a2b", "--frames", str(n))
        self.start_reader("bravo", "rx", irx, "/dev/vda")
        self.sh("alpha", f"dd if=/dev/vda of=/dev/tbstream{itx} bs=256k count={size // (256 << 10)}")
        rx_sha = self.recv_sha("bravo", "rx", "/dev/vda", size)
        self.assertNotEqual(rx_sha, sha256_file(self.data_img, size),
                            "corrupted frames must reach user space corrupted")
        bad = 0
        with open(self.data_img, "rb") as f1, open(self.recv_img, "rb") as f2:
            for _ in range(size // 4096):
                if f1.read(4096) != f2.read(4096):
                    bad += 1
        log(f"{bad} of {size // 4096} 4-KiB frames differ after corrupting {n}")
        self.assertGreaterEqual(bad, 1)
        self.assertLessEqual(bad, n, "more frames differ than were corrupted")
        status = c.ctl("status")
        log("cable-ctl status: " + " ".join(status.split())[:300])
        # Everything after the corrupted frames arrives intact: a second transfer is clean.
        self.sh("bravo", f"bg rx2 dd if=/dev/tbstream{irx} of=/tmp/rx2 bs=256k; waitopen /dev/tbstream{irx} 10")
        self.sh("alpha", f"dd if=/dev/vda of=/dev/tbstream{itx} bs=256k count=4")
        self.assertEqual(self.recv_sha("bravo", "rx2", "/tmp/rx2", MiB), sha256_file(self.data_img, MiB))

    def test_06_rate_cap(self):
        """cable-ctl rate: report capped vs uncapped throughput; assert only 'clearly slower'."""
        irx, itx = self.streams("rate")
        c = self.cable[("alpha", "bravo")]

        def timed(nbytes, job):
            self.start_reader("bravo", job, irx, "/dev/null")
            out = self.sh("alpha", f"""t0=$(now)
dd if=/dev/vda of=/dev/tbstream{itx} bs=256k count={nbytes // (256 << 10)} 2>/dev/null || exit 1
t1=$(now)
echo "@@R dt=$(echo "$t0 $t1" | awk '{{print $2 - $1}}')"
""", timeout=300)
            self.sh("bravo", f"bgwait {job} 120", timeout=180)
            return max(float(field(out, "dt")), 0.01)

        n1 = 32 * MiB
        dt1 = timed(n1, "free")
        rate1 = n1 / dt1
        cap = max(256 << 10, int(rate1 / 4))
        # About 2 s at the cap, and never more than the uncapped run: the writer's
        # dd can return before the data is across (TCG under load), which
        # overstates rate1 and made n2 hundreds of MiB that outlasted bgwait's 120 s.
        n2 = max(1 * MiB, min(n1, (int(cap * 2) // (256 << 10)) * (256 << 10)))
        c.ctl("rate", "--bytes-per-sec", str(cap))
        dt2 = timed(n2, "capped")
        c.ctl("rate", "--bytes-per-sec", "0")
        rate2 = n2 / dt2
        log(f"uncapped {rate1 / MiB:.1f} MiB/s ({n1 // MiB} MiB in {dt1:.2f}s); cap {cap / MiB:.2f} MiB/s: "
            f"{rate2 / MiB:.2f} MiB/s ({n2 / MiB:.1f} MiB in {dt2:.2f}s)")
        self.assertLess(rate2, rate1 * 0.6, "capped transfer is not clearly slower than uncapped")

    def test_07_sysfs_attributes(self):
        """domain0 security / iommu_dma_protection, 0-1 device_name = peer hostname,
        0-1.0 key / prtcid / prtcvers / prtcrevs / modalias, peer unique_id."""
        info = {}
        for n in self.vm_names:
            out = self.sh(n, f"""
for f in security iommu_dma_protection; do echo "@@R $f=$(cat {TBDEV}/domain0/$f)"; done
s=$(svc); x=${{s%.*}}
echo "@@R svc=$s"
echo "@@R xd=$x"
for f in device_name vendor_name unique_id; do echo "@@R $f=$(cat {TBDEV}/$x/$f)"; done
for f in key prtcid prtcvers prtcrevs modalias; do echo "@@R $f=$(cat {TBDEV}/$s/$f)"; done
echo "@@R host_uuid=$(cat {TBDEV}/0-0/unique_id 2>/dev/null)"
echo "@@R hostname=$(hostname)"
""")
            info[n] = {k: field(out, k) for k in (
                "security", "iommu_dma_protection", "svc", "xd", "device_name", "vendor_name",
                "unique_id", "key", "prtcid", "prtcvers", "prtcrevs", "modalias", "host_uuid",
                "hostname")}
        for n, peer in (("alpha", "bravo"), ("bravo", "alpha")):
            i = info[n]
            log(f"{n}: " + ", ".join(f"{k}={v}" for k, v in i.items()))
            self.assertIn(i["security"], {"none", "user", "secure", "dponly", "usbonly", "nopcie"})
            self.assertIn(i["iommu_dma_protection"], {"0", "1"})
            self.assertEqual(i["svc"], "0-1.0")
            self.assertEqual(i["xd"], "0-1")
            self.assertEqual(i["device_name"], info[peer]["hostname"], "device_name != peer hostname")
            self.assertEqual(i["key"], "stream")
            self.assertEqual(i["prtcid"], "1")
            self.assertEqual(i["prtcvers"], "1")
            self.assertEqual(i["prtcrevs"], "0")
            self.assertTrue(i["modalias"].startswith("tbsvc:kstreamp00000001"), i["modalias"])
            if info[peer]["host_uuid"]:
                self.assertEqual(i["unique_id"], info[peer]["host_uuid"],
                                 "XDomain unique_id != peer's host router unique_id")

    def test_08_configfs_errnos(self):
        check_configfs_errnos(self, "alpha")

    def test_09_unplug_enxio_and_replug(self):
        """Unplug while data flows: reader and writer get ENXIO, the XDomain goes away.
        Plug again: the service comes back, the same ConfigFS groups re-attach and a new
        transfer works without re-creating anything."""
        irx, itx = self.streams("plug")
        before = {n: self.sh(n, f"streaminfo {self.svc[n]} plug").split() for n in self.vm_names}
        self.start_reader("bravo", "rx", irx, "/dev/null")
        self.sh("alpha", f"bg tx dd if=/dev/zero of=/dev/tbstream{itx} bs=256k; usleep 500000; "
                         f"[ ! -f /tmp/bg.tx.rc ] || {{ cat /tmp/bg.tx.out; exit 1; }}")
        c = self.cable[("alpha", "bravo")]
        c.ctl("unplug")
        rc, out = self.rc("bravo", "bgwait rx 30", timeout=60)
        self.assertNotEqual(rc, 124, "reader still blocked 30 s after unplug")
        self.assertIn(ENXIO_TEXT, out, f"reader: expected ENXIO after unplug, got rc={rc}: {out}")
        rc, out = self.rc("alpha", "bgwait tx 30", timeout=60)
        self.assertNotEqual(rc, 124, "writer still blocked 30 s after unplug")
        self.assertIn(ENXIO_TEXT, out, f"writer: expected ENXIO after unplug, got rc={rc}: {out}")
        for n in self.vm_names:
            self.sh(n, f"waitfor 15 sh -c '! [ -e {TBDEV}/0-1 ]'", timeout=30)
        c.ctl("plug")
        for n in self.vm_names:
            self.sh(n, "linkwait 30", timeout=60)
            after = self.sh(n, f"streaminfo {self.svc[n]} plug").split()
            self.assertEqual(after, before[n], f"{n}: stream changed across replug")
        self.start_reader("bravo", "rx2", irx, "/tmp/rx2")
        self.sh("alpha", f"dd if=/dev/vda of=/dev/tbstream{itx} bs=256k count=4")
        self.assertEqual(self.recv_sha("bravo", "rx2", "/tmp/rx2", MiB), sha256_file(self.data_img, MiB))


class ChainTest(VMTestCase):
    """Three VMs: alpha -- bravo -- charlie; bravo has two cables (two domains)."""

    vm_names = ("alpha", "bravo", "charlie")
    cables = (("alpha", "bravo"), ("bravo", "charlie"))   # bravo: side b, then side a

    def test_01_two_cables(self):
        out = self.sh("bravo", f"""waitfor 60 sh -c '[ $(ls -d {TBDEV}/*.* 2>/dev/null | wc -l) -ge 2 ]' || exit 1
for s in {TBDEV}/*.*; do echo "@@S $(basename $s) $(cat $s/key) $(cat ${{s%.*}}/device_name)"; done""",
                      timeout=90)
        svcs = re.findall(r"^@@S (\S+) (\S+) (\S+)$", out, re.M)
        peers = {p: s for s, k, p in svcs if k == "stream"}
        self.assertEqual(set(peers), {"alpha", "charlie"}, out)
        for n in ("alpha", "charlie"):
            self.sh(n, "linkwait 60", timeout=90)
        # alpha -> bravo and charlie -> bravo at the same time, 1 MiB each.
        for n in ("alpha", "charlie"):
            out = self.sh("bravo", f"mkstream {peers[n]} from{n[0]} -1 -1")
            idx = out.split()[-3]
            self.sh("bravo", f"bg rx{n} dd if=/dev/tbstream{idx} of=/tmp/from{n} bs=256k; "
                             f"waitopen /dev/tbstream{idx} 10")
        for n in ("alpha", "charlie"):
            s = self.sh(n, "svc").strip()
            idx = self.sh(n, f"mkstream {s} from{n[0]}").split()[-3]
            self.sh(n, f"dd if=/dev/urandom of=/tmp/src bs=256k count=4 2>/dev/null; "
                       f"bg tx dd if=/tmp/src of=/dev/tbstream{idx} bs=256k")
        for n in ("alpha", "charlie"):
            src = field(self.sh(n, 'bgwait tx 120 >/dev/null; echo "@@R sha=$(sha256sum /tmp/src | cut -d" " -f1)"',
                                timeout=180), "sha")
            dst = field(self.sh("bravo", f'bgwait rx{n} 120 >/dev/null; echo "@@R sha=$(sha256sum /tmp/from{n} | cut -d" " -f1)"',
                                timeout=180), "sha")
            self.assertEqual(src, dst, f"{n} -> bravo data differs")


# ----------------------------------------------------------------------------- runner
SUITE_ORDER = (RealDriverTest,)


class _Result(unittest.TextTestResult):
    def _keep_logs(self, test):
        rig = getattr(type(test), "rig", None)
        if rig is not None:
            rig.failed = True   # tearDownClass keeps the VM logs and prints where

    def addFailure(self, test, err):
        self._keep_logs(test)
        super().addFailure(test, err)

    def addError(self, test, err):
        self._keep_logs(test)
        super().addError(test, err)

    def startTest(self, test):
        self._t0 = time.monotonic()
        super().startTest(test)

    def stopTest(self, test):
        super().stopTest(test)
        if hasattr(self, "_t0") and self.showAll:
            self.stream.writeln(f"      ({time.monotonic() - self._t0:.1f}s)")


def main(argv=None, suite_order=SUITE_ORDER, description="paired-VM cable tests"):
    import argparse
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("-k", action="append", default=[], help="only tests matching this substring")
    ap.add_argument("-q", action="store_true", help="less output")
    a = ap.parse_args(argv)
    loader = unittest.TestLoader()
    if a.k:
        loader.testNamePatterns = [f"*{k}*" for k in a.k]
    suite = unittest.TestSuite(loader.loadTestsFromTestCase(c) for c in suite_order)
    per_class = {c.__name__: c_suite.countTestCases()
                 for c, c_suite in zip(suite_order, suite)}
    t0 = time.monotonic()
    runner = unittest.TextTestRunner(verbosity=1 if a.q else 2, resultclass=_Result,
                                     stream=sys.stderr)
    res = runner._makeResult()
    interrupted = False
    res.startTestRun()
    try:
        suite(res)
    except KeyboardInterrupt:  # Ctrl-C / SIGTERM (vmpair turns it into this): VMs are gone
        interrupted = True
        print("\ninterrupted: VMs stopped, cables removed", file=sys.stderr)
    finally:
        res.stopTestRun()
    res.printErrors()
    print(f"Ran {res.testsRun} tests", file=sys.stderr)
    failed, bad_tests = 0, set()
    for test, _ in res.failures + res.errors:
        m = re.match(r"setUpClass \((?:[\w.]*\.)?(\w+)\)", str(test))
        if m:  # a class set-up error stands for every test of that class
            failed += per_class.get(m.group(1), 1)
        elif test.id() not in bad_tests:
            bad_tests.add(test.id())
            failed += 1
    failed += interrupted
    skipped = len(res.skipped)
    passed = max(res.testsRun - len(bad_tests) - skipped, 0)
    print(f"suite wall time {time.monotonic() - t0:.0f}s; {skipped} skipped", file=sys.stderr)
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
