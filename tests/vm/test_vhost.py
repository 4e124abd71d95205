#!/usr/bin/env python3
"""Paired-VM tests of the virtual USB4 host (usb4vhost.ko) under Debian's own, unmodified
thunderbolt_stream.ko.

Run with tests/vm/run-cable-tests.sh (it builds what is needed). Directly:
    USB4RESCUE_VM_KERNEL=... USB4RESCUE_VM_VHOST_INITRD=... USB4RESCUE_CABLE_CTL=... \\
        python3 tests/vm/test_vhost.py [-k PATTERN] [-v]

USB4RESCUE_VM_VHOST_INITRD is an initramfs from build-initramfs.py --ko usb4vhost.ko (it
holds the kernel's thunderbolt_stream.ko, decompressed, beside it); USB4RESCUE_IMAGE names
the `image` binary that reads the kernel package's module (built with cargo if unset). The VMs boot with no
thunderbolt module loaded; the test loads usb4vhost, then thunderbolt_stream, as a loader
that treats usb4vhost as providing `thunderbolt` would.

VhostPairTest (alpha = side a, the sender of the upstream example, "host1"; bravo = side b,
the receiver, "host2"; alpha's vda holds 16 MiB of random data, bravo's vda is blank):
  test_01_modules_and_binding  Debian's thunderbolt_stream.ko (sha256 = the file in the
                               kernel package) loads on usb4vhost and binds to the peer's
                               service 0-1.0; ConfigFS thunderbolt/stream exists; 0-1's
                               maxhopid/vendor/device from the peer's properties; domain0 as a
                               software connection manager's (deauthorization 1, no boot_acl).
  test_02_upstream_example     the announcement's example verbatim: bravo mkdirs the service
                               and `backup`, echo -1 to both HopIDs, dd from /dev/tbstream0;
                               alpha mkdirs both (HopIDs learned from bravo's properties) and
                               dd's its disk into /dev/tbstream0 with bs=256k; the bytes are
                               equal; `rmdir -p 0-1.0/backup` tears both sides down.
  test_03_tar_gzip             `tar cf - mydir | gzip > /dev/tbstream0` on alpha,
                               `gunzip < /dev/tbstream0 | tar xf -` on bravo: same files.
  test_04_busy_poll            busy_poll=1 (rings with RING_FLAG_NO_INTERRUPT, polled by the
                               driver) on both sides: 4 MiB arrive intact.
  test_05_ring_delay           cable-ctl delay on one ring (one stream's a2b HopID): its frame
                               arrives no sooner than the delay, another ring's at once; 0 ends it.
  test_06_ring_rate            cable-ctl rate --hopid caps one ring (2 MiB at 512 KiB/s >= 3.5 s)
                               while another ring runs free; both intact.
  test_07_property_change_uevents  a stream made on bravo reaches alpha as KOBJ_CHANGE on
                               0-1.0 and 0-1 (busybox uevent), and alpha adopts its HopIDs.
VhostCableTest: every test of test_cable.py's CableTest (written against usb4vcable, our deleted
  re-implementation of the driver), on
  usb4vhost + thunderbolt_stream: upstream example 64 MiB, reverse order, EOF per cycle, two
  streams, corrupted frames (RING_DESC_CRC_ERROR), rate cap, sysfs, ConfigFS errnos, unplug
  (ENXIO) and replug.
Every test fails if a guest's kernel log shows Oops / BUG: / WARNING: / Call Trace.
"""
from __future__ import annotations

import hashlib
import re
import sys
import time
from pathlib import Path

sys.dont_write_bytecode = True   # no __pycache__ in the source tree
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import CFS, MiB, TBDEV, VMTestCase, field, log, sha256_file  # noqa: E402
from vmpair import image_cat  # noqa: E402
import test_cable  # noqa: E402
from test_cable import CableTest  # noqa: E402

MODULES = "usb4vhost,thunderbolt,thunderbolt_stream"


def packaged_stream_sha256(kernel: str) -> str | None:
    """SHA-256 of thunderbolt_stream.ko as Debian's package has it (the .ko.xz
    decompressed by `image cat`, the project's one decompressor)."""
    mods = Path(kernel).parent / "lib" / "modules"
    for p in mods.glob("*/kernel/drivers/thunderbolt/thunderbolt_stream.ko*"):
        return hashlib.sha256(image_cat(p)).hexdigest()
    return None


class VhostBoot:
    """Mixin: boot from the usb4vhost initramfs with no thunderbolt module loaded, then load
    usb4vhost (side a/b as in `cables`) and Debian's thunderbolt_stream in every VM."""

    noload = MODULES
    needs = ("usb4vhost", "thunderbolt_stream", "configfs")
    initrd_env = "USB4RESCUE_VM_VHOST_INITRD"

    @classmethod
    def load_modules(cls):
        sides = {}
        for x, y in cls.cables:
            sides.setdefault(x, []).append("a")
            sides.setdefault(y, []).append("b")
        cls.load_out = {}
        for n, v in cls.vm.items():
            r = v.run(f"""
insmod /lib/modules/usb4vhost.ko side={','.join(sides[n])} 2>&1 && echo "@@R vhost=ok"
insmod /lib/modules/thunderbolt_stream.ko 2>&1 && echo "@@R stream=ok"
echo "@@R sha=$(sha256sum /lib/modules/thunderbolt_stream.ko | cut -d' ' -f1)"
""", timeout=60)
            cls.load_out[n] = r.out
            if "@@R vhost=ok" not in r.out or "@@R stream=ok" not in r.out:
                raise AssertionError(f"{n}: loading usb4vhost + thunderbolt_stream failed:\n"
                                     f"{r.out}\n--- console ---\n{v.tail(40)}")

    @classmethod
    def after_boot(cls):
        cls.load_modules()
        super().after_boot()


class VhostPairTest(VhostBoot, VMTestCase):
    """alpha (side a) -- cable -- bravo (side b), each with usb4vhost + thunderbolt_stream."""

    vm_names = ("alpha", "bravo")
    cables = (("alpha", "bravo"),)
    data_size = 16 * MiB

    # Same disks as CableTest (alpha: random data, bravo: blank) and the same wait for
    # the link once the modules are in.
    @classmethod
    def disks(cls, name):
        return CableTest.disks.__func__(cls, name)

    @classmethod
    def after_boot(cls):
        super().after_boot()
        CableTest.after_boot.__func__(cls)

    def reset(self):
        self.cable[("alpha", "bravo")].ctl("plug")
        self.cable[("alpha", "bravo")].ctl("clear")
        super().reset()
        for n in self.vm_names:
            self.sh(n, "linkwait 30", timeout=60)

    def test_01_modules_and_binding(self):
        want = packaged_stream_sha256(self.kernel)
        self.assertIsNotNone(want, "no thunderbolt_stream.ko in the fetched kernel")
        for n in self.vm_names:
            out = self.load_out[n]
            self.assertEqual(field(out, "vhost"), "ok", out)
            self.assertEqual(field(out, "stream"), "ok", out)
            self.assertEqual(field(out, "sha"), want,
                             "the VM's thunderbolt_stream.ko is not Debian's, byte for byte")
            out = self.sh(n, f"""
echo "@@R driver=$(basename $(readlink {TBDEV}/0-1.0/driver))"
echo "@@R key=$(cat {TBDEV}/0-1.0/key) $(cat {TBDEV}/0-1.0/prtcid)"
echo "@@R peer=$(cat {TBDEV}/0-1/device_name)"
echo "@@R maxhopid=$(cat {TBDEV}/0-1/maxhopid)"
echo "@@R xid=$(cat {TBDEV}/0-1/vendor) $(cat {TBDEV}/0-1/device) $(cat {TBDEV}/0-1/vendor_name)"
echo "@@R deauth=$(cat {TBDEV}/domain0/deauthorization)"
[ -e {TBDEV}/domain0/boot_acl ] && echo "@@R boot_acl=yes" || echo "@@R boot_acl=no"
[ -d {CFS} ] && echo "@@R cfs=yes"
grep -q '^thunderbolt_stream ' /proc/modules && echo "@@R loaded=yes"
""")
            self.assertEqual(field(out, "driver"), "thunderbolt_stream")
            self.assertEqual(field(out, "key"), "stream 1")
            self.assertEqual(field(out, "peer"), "bravo" if n == "alpha" else "alpha")
            # The peer's maxhopid, vendor and device come from its XDomain properties
            # (7 + the cable's 8 channels), as the real core takes them from the peer's block.
            self.assertEqual(field(out, "maxhopid"), "15")
            self.assertEqual(field(out, "xid"), "0x8086 0x1 Intel Corp.")
            # A USB4 host's software connection manager: deauthorization 1, no boot_acl.
            self.assertEqual(field(out, "deauth"), "1")
            self.assertEqual(field(out, "boot_acl"), "no")
            self.assertEqual(field(out, "cfs"), "yes")
            self.assertEqual(field(out, "loaded"), "yes")

    def test_02_upstream_example(self):
        # host2 (bravo), the receiver: exactly the announcement's commands.
        self.sh("bravo", """cd /sys/kernel/config/thunderbolt/stream
mkdir 0-1.0
mkdir 0-1.0/backup
echo -1 > 0-1.0/backup/in_hopid
echo -1 > 0-1.0/backup/out_hopid
""")
        hop_b = self.sh("bravo", "streaminfo 0-1.0 backup").split()
        self.assertGreaterEqual(int(hop_b[1]), 8, hop_b)
        self.assertGreaterEqual(int(hop_b[2]), 8, hop_b)
        self.sh("bravo", "bg rx dd if=/dev/tbstream0 of=/dev/vda bs=256k; waitopen /dev/tbstream0 10")
        # host1 (alpha), the sender: the two mkdirs only, HopIDs come from bravo.
        self.sh("alpha", """cd /sys/kernel/config/thunderbolt/stream
mkdir 0-1.0
mkdir 0-1.0/backup
""")
        hop_a = self.sh("alpha", "streaminfo 0-1.0 backup").split()
        self.assertEqual((hop_a[1], hop_a[2]), (hop_b[2], hop_b[1]),
                         "alpha did not learn bravo's HopIDs (reversed) from its properties")
        t0 = time.monotonic()
        self.sh("alpha", "dd if=/dev/vda of=/dev/tbstream0 bs=256k", timeout=600)
        dt = time.monotonic() - t0
        out = self.sh("bravo", """bgwait rx 120 || exit $?
sync
echo "@@R sha=$(head -c %d /dev/vda | sha256sum | cut -d' ' -f1)"
""" % self.data_size, timeout=200)
        log(f"{self.data_size // MiB} MiB alpha -> bravo in {dt:.1f}s "
            f"({self.data_size / MiB / max(dt, 0.01):.1f} MiB/s, host clock)")
        self.assertEqual(field(out, "sha"), self.data_sha, "received bytes differ")
        self.assertEqual(sha256_file(self.recv_img, self.data_size), self.data_sha,
                         "bravo's disk image (host view) differs")
        for n in ("alpha", "bravo"):
            self.sh(n, "cd /sys/kernel/config/thunderbolt/stream && rmdir -p 0-1.0/backup")
        for n in ("alpha", "bravo"):
            out = self.sh(n, f"""ls {CFS} | wc -l | sed 's/^/@@R groups=/'
[ -e /dev/tbstream0 ] && echo "@@R dev=yes" || echo "@@R dev=no"
""")
            self.assertEqual(field(out, "groups"), "0", f"{n}: ConfigFS groups left")
            self.assertEqual(field(out, "dev"), "no", f"{n}: /dev/tbstream0 left")

    def test_03_tar_gzip(self):
        self.sh("bravo", f"mkstream 0-1.0 backup -1 -1 >/dev/null; mkdir -p /tmp/got; cd /tmp/got; "
                         f"bg rx sh -c 'gunzip < /dev/tbstream0 | tar xf -'; waitopen /dev/tbstream0 10")
        self.sh("alpha", "mkstream 0-1.0 backup >/dev/null")
        src = self.sh("alpha", """mkdir -p /tmp/mydir/sub
dd if=/dev/urandom of=/tmp/mydir/a bs=64k count=20 2>/dev/null
echo hello > /tmp/mydir/sub/b
cd /tmp && tar cf - mydir | gzip > /dev/tbstream0
cd /tmp && find mydir -type f | sort | xargs sha256sum
""")
        got = self.sh("bravo", "bgwait rx 60 >/dev/null || exit 1; cd /tmp/got && "
                               "find mydir -type f | sort | xargs sha256sum")
        src_sums = [l for l in src.splitlines() if re.match(r"^[0-9a-f]{64}  ", l)]
        got_sums = [l for l in got.splitlines() if re.match(r"^[0-9a-f]{64}  ", l)]
        self.assertEqual(len(src_sums), 2, src)
        self.assertEqual(got_sums, src_sums, "unpacked tree differs")


    def test_04_busy_poll(self):
        """Debian 7.3.4's busy_poll=1: rings without interrupts, frames reaped by
        tb_ring_poll() from read/write; 4 MiB arrive intact."""
        for n in ("bravo", "alpha"):
            args = " -1 -1" if n == "bravo" else ""
            self.sh(n, f"mkstream 0-1.0 bp{args} >/dev/null && echo 1 > {CFS}/0-1.0/bp/busy_poll && "
                       f"[ \"$(cat {CFS}/0-1.0/bp/busy_poll)\" = 1 ]")
        self.sh("bravo", "bg rx dd if=/dev/tbstream0 of=/tmp/rx bs=256k; waitopen /dev/tbstream0 10")
        src = field(self.sh("alpha", """dd if=/dev/urandom of=/tmp/src bs=256k count=16 2>/dev/null
dd if=/tmp/src of=/dev/tbstream0 bs=256k || exit 1
echo "@@R sha=$(sha256sum /tmp/src | cut -d' ' -f1)"
""", timeout=120), "sha")
        got = field(self.sh("bravo", 'bgwait rx 60 >/dev/null || exit 1; '
                                     'echo "@@R sha=$(sha256sum /tmp/rx | cut -d" " -f1)"', timeout=90), "sha")
        self.assertEqual(got, src, "busy_poll transfer differs")


    def ring_streams(self, *names):
        """Streams made as upstream (bravo -1 -1, alpha adopts): -> {name: (idx_bravo,
        idx_alpha, alpha's out_hopid = the a2b ring's HopID)}."""
        got = {}
        for name in names:
            irx, itx = CableTest.streams(self, name)
            hop = self.sh("alpha", f"cat {CFS}/{self.svc['alpha']}/{name}/out_hopid").strip()
            got[name] = (irx, itx, int(hop))
        self.assertEqual(len({h for _, _, h in got.values()}), len(names), got)
        return got

    def test_05_ring_delay(self):
        """cable-ctl delay on the a2b ring of one stream: its frame reaches bravo no sooner
        than the delay after alpha wrote it, while a frame written at the same time on another
        ring arrives before the delay is over; with the delay back at 0 it arrives at once."""
        delay = 6.0
        c = self.cable[("alpha", "bravo")]
        st = self.ring_streams("slow", "fast")
        (slow_b, slow_a, slow_hop), (fast_b, fast_a, _) = st["slow"], st["fast"]
        c.ctl("delay", "--dir", "a2b", "--hopid", str(slow_hop), "--ms", str(int(delay * 1000)))
        for job, idx in (("rs", slow_b), ("rf", fast_b)):
            self.sh("bravo", f"bg {job} dd if=/dev/tbstream{idx} of=/tmp/{job} bs=4k count=1; "
                             f"waitopen /dev/tbstream{idx} 10")
        t0 = time.monotonic()
        self.sh("alpha", f"printf slow > /dev/tbstream{slow_a} & printf fast > /dev/tbstream{fast_a}; wait")
        out = self.sh("bravo", """bgwait rf 20 >/dev/null || exit 1
echo "@@R fast=$(cat /tmp/rf)"
[ -f /tmp/bg.rs.rc ] && echo "@@R slow=done" || echo "@@R slow=pending"
""")
        t_fast = time.monotonic() - t0
        self.assertEqual(field(out, "fast"), "fast")
        self.assertLess(t_fast, delay, "the frame on the other ring was delayed too")
        # Less than `delay` has passed since alpha wrote: the delayed frame must still wait.
        self.assertEqual(field(out, "slow"), "pending", "the delayed frame arrived early")
        out = self.sh("bravo", 'bgwait rs 30 >/dev/null || exit 1; echo "@@R slow=$(cat /tmp/rs)"',
                      timeout=60)
        t_slow = time.monotonic() - t0
        log(f"delay {delay:.1f}s on HopID {slow_hop} a2b: that frame took {t_slow:.2f}s, "
            f"the other ring's {t_fast:.2f}s (host clock, harness included)")
        self.assertEqual(field(out, "slow"), "slow")
        self.assertGreaterEqual(t_slow, delay, "the delayed frame arrived before the delay")
        self.assertLess(t_slow, delay + 20, "the delayed frame is stuck")
        c.ctl("delay", "--dir", "a2b", "--hopid", str(slow_hop), "--ms", "0")
        self.sh("bravo", f"bg rs2 dd if=/dev/tbstream{slow_b} of=/tmp/rs2 bs=4k count=1; "
                         f"waitopen /dev/tbstream{slow_b} 10")
        t0 = time.monotonic()
        self.sh("alpha", f"printf again > /dev/tbstream{slow_a}")
        out = self.sh("bravo", 'bgwait rs2 20 >/dev/null || exit 1; echo "@@R got=$(cat /tmp/rs2)"')
        self.assertEqual(field(out, "got"), "again")
        self.assertLess(time.monotonic() - t0, delay, "delay 0 did not end the delay")

    def test_06_ring_rate(self):
        """cable-ctl rate --hopid caps one ring: 2 MiB on it at 512 KiB/s take at least 3.5 s
        to arrive (the bucket starts empty, burst 10 KiB), while 4 MiB sent at the same time
        on another ring arrive first; both intact. The writers keep their ends open until
        the readers have everything: the kernel's driver drops what is still in its TX ring
        500 ms after the last close (kmod/README.md), and a capped ring holds 1 MiB. Each
        send ends with the EOF of the writers' close read, so the next starts clean."""
        cap, n_capd, n_free = 512 << 10, 2 * MiB, 4 * MiB
        c = self.cable[("alpha", "bravo")]
        st = self.ring_streams("capd", "free")
        (capd_b, capd_a, capd_hop), (free_b, free_a, _) = st["capd"], st["free"]

        def send(*rings):
            """Send on (bravo idx, alpha idx, bytes, job) at once; -> seconds until each
            reader had all (host clock, from before the first send, harness included)."""
            for job, idx_b, _, n in rings:
                self.sh("bravo", f"bg r{job} sh -c 'head -c {n} /dev/tbstream{idx_b} > /tmp/{job}'; "
                                 f"waitopen /dev/tbstream{idx_b} 10")
            t0 = time.monotonic()
            for job, _, idx_a, n in rings:
                self.sh("alpha", f"bg t{job} sh -c '{{ dd if=/dev/vda bs=256k count={n // (256 << 10)}; "
                                 f"sleep 120; }} > /dev/tbstream{idx_a}'")
            took = []
            for job, _, _, _ in rings:
                self.sh("bravo", f"bgwait r{job} 60 >/dev/null", timeout=90)
                took.append(time.monotonic() - t0)
            # The writers' close ends this open/close cycle with an EOF that `head` left
            # unread: a reader drains it, or the next send's reader on this ring would
            # get it at once (and nothing else).
            for job, idx_b, _, _ in rings:
                self.sh("bravo", f"bg e{job} cat /dev/tbstream{idx_b}; waitopen /dev/tbstream{idx_b} 10")
            self.sh("alpha", "; ".join(f"bgkill t{job}" for job, _, _, _ in rings))
            for job, _, _, _ in rings:
                self.sh("bravo", f"bgwait e{job} 20 >/dev/null", timeout=40)
            return took

        (t_base,) = send(("base", free_b, free_a, n_free))
        c.ctl("rate", "--bytes-per-sec", str(cap), "--hopid", str(capd_hop), "--dir", "a2b")
        try:
            t_free, t_capd = send(("rf", free_b, free_a, n_free), ("rc", capd_b, capd_a, n_capd))
            status = c.ctl("status")
        finally:
            # Lifted before the reset: a ring still capped drains what its writers left at
            # 512 KiB/s, and the reset's wait for the streams to close ran out (twice in
            # three runs; the VMs were then rebooted).
            c.ctl("rate", "--bytes-per-sec", "0", "--hopid", str(capd_hop), "--dir", "a2b")
        log(f"ring cap {cap >> 10} KiB/s on HopID {capd_hop} a2b: {n_capd // MiB} MiB in {t_capd:.2f}s "
            f"({n_capd / MiB / t_capd:.2f} MiB/s); {n_free // MiB} MiB on the free ring meanwhile "
            f"in {t_free:.2f}s, alone before in {t_base:.2f}s (host clock, harness included)")
        self.assertIn(f"ring a2b HopID {capd_hop}: delay 0 ms, rate cap {cap} B/s", status)
        self.assertGreaterEqual(t_capd, 3.5, "the capped ring was not held to its cap")
        self.assertLess(t_free, t_capd, "the other ring was held back by the cap too")
        sums = self.sh("bravo", 'echo "@@R c=$(sha256sum < /tmp/rc | cut -d" " -f1)"; '
                                'echo "@@R f=$(sha256sum < /tmp/rf | cut -d" " -f1)"')
        self.assertEqual(field(sums, "c"), sha256_file(self.data_img, n_capd), "capped ring's data differ")
        self.assertEqual(field(sums, "f"), sha256_file(self.data_img, n_free), "free ring's data differ")


    def test_07_property_change_uevents(self):
        """The XDomain property exchange: a stream bravo makes (HopIDs published through
        tb_service_properties_changed) reaches alpha as a KOBJ_CHANGE on the service 0-1.0
        and on the XDomain 0-1, as the real core emits them; alpha then adopts the HopIDs."""
        self.sh("alpha", "rm -f /tmp/ue.log; bg ue uevent sh -c 'echo $ACTION $DEVPATH >> /tmp/ue.log'; "
                         "usleep 300000")
        try:
            out = self.sh("bravo", f"mkstream {self.svc['bravo']} pc -1 -1")
            _, in_b, out_b = map(int, out.split()[-3:])
            self.sh("alpha", "waitfor 10 grep -q '^change .*/0-1/0-1.0$' /tmp/ue.log", timeout=30)
            events = self.sh("alpha", "cat /tmp/ue.log").splitlines()
        finally:
            self.sh("alpha", "bgkill ue")
        log("alpha's uevents: " + "; ".join(events[:8]))
        self.assertTrue(any(e.startswith("change ") and e.endswith("/0-1/0-1.0") for e in events), events)
        self.assertTrue(any(e.startswith("change ") and e.endswith("/0-1") for e in events), events)
        out = self.sh("alpha", f"mkstream {self.svc['alpha']} pc")
        self.assertEqual(tuple(map(int, out.split()[-2:])), (out_b, in_b))


class VhostCableTest(VhostBoot, CableTest):
    """test_cable.py's CableTest, unchanged, on usb4vhost + Debian's thunderbolt_stream:
    what was written against usb4vcable holds for the kernel's driver too."""


SUITE_ORDER = (VhostPairTest, VhostCableTest)


if __name__ == "__main__":
    sys.exit(test_cable.main(suite_order=SUITE_ORDER, description="virtual USB4 host tests"))
