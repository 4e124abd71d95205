#!/usr/bin/env python3
"""Paired-VM tests of the virtual USB4 host (usb4vhost.ko) under Debian's own, unmodified
thunderbolt_stream.ko.

Run with tests/vm/run-cable-tests.sh (it builds what is needed). Directly:
    USB4RESCUE_VM_KERNEL=... USB4RESCUE_VM_VHOST_INITRD=... USB4RESCUE_CABLE_CTL=... \\
        python3 tests/vm/test_vhost.py [-k PATTERN] [-v]

USB4RESCUE_VM_VHOST_INITRD is an initramfs from build-initramfs.py --ko usb4vhost.ko (it
holds the kernel's thunderbolt_stream.ko, decompressed, beside it). The VMs boot with no
thunderbolt module loaded; the test loads usb4vhost, then thunderbolt_stream, as a loader
that treats usb4vhost as providing `thunderbolt` would.

VhostPairTest (alpha = side a, the sender of the upstream example, "host1"; bravo = side b,
the receiver, "host2"; alpha's vda holds 16 MiB of random data, bravo's vda is blank):
  test_01_modules_and_binding  Debian's thunderbolt_stream.ko (sha256 = the file in the
                               kernel package) loads on usb4vhost and binds to the peer's
                               service 0-1.0; ConfigFS thunderbolt/stream exists.
  test_02_upstream_example     the announcement's example verbatim: bravo mkdirs the service
                               and `backup`, echo -1 to both HopIDs, dd from /dev/tbstream0;
                               alpha mkdirs both (HopIDs learned from bravo's properties) and
                               dd's its disk into /dev/tbstream0 with bs=256k; the bytes are
                               equal; `rmdir -p 0-1.0/backup` tears both sides down.
  test_03_tar_gzip             `tar cf - mydir | gzip > /dev/tbstream0` on alpha,
                               `gunzip < /dev/tbstream0 | tar xf -` on bravo: same files.
  test_04_busy_poll            busy_poll=1 (rings with RING_FLAG_NO_INTERRUPT, polled by the
                               driver) on both sides: 4 MiB arrive intact.
VhostCableTest: every test of test_cable.py's CableTest (written against usb4vcable), on
  usb4vhost + thunderbolt_stream: upstream example 64 MiB, reverse order, EOF per cycle, two
  streams, corrupted frames (RING_DESC_CRC_ERROR), rate cap, sysfs, ConfigFS errnos, unplug
  (ENXIO) and replug.
Every test fails if a guest's kernel log shows Oops / BUG: / WARNING: / Call Trace.
"""
from __future__ import annotations

import hashlib
import lzma
import re
import sys
import time
from pathlib import Path

sys.dont_write_bytecode = True   # no __pycache__ in the source tree
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import CFS, MiB, TBDEV, VMTestCase, field, log, sha256_file  # noqa: E402
import test_cable  # noqa: E402
from test_cable import CableTest  # noqa: E402

MODULES = "usb4vcable,usb4vhost,thunderbolt,thunderbolt_stream"


def packaged_stream_sha256(kernel: str) -> str | None:
    """SHA-256 of thunderbolt_stream.ko as Debian's package has it (decompressed .ko.xz)."""
    mods = Path(kernel).parent / "lib" / "modules"
    for p in mods.glob("*/kernel/drivers/thunderbolt/thunderbolt_stream.ko*"):
        data = p.read_bytes()
        if p.suffix == ".xz":
            data = lzma.decompress(data)
        return hashlib.sha256(data).hexdigest()
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
[ -d {CFS} ] && echo "@@R cfs=yes"
grep -q '^thunderbolt_stream ' /proc/modules && echo "@@R loaded=yes"
""")
            self.assertEqual(field(out, "driver"), "thunderbolt_stream")
            self.assertEqual(field(out, "key"), "stream 1")
            self.assertEqual(field(out, "peer"), "bravo" if n == "alpha" else "alpha")
            self.assertGreaterEqual(int(field(out, "maxhopid")), 8)
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


class VhostCableTest(VhostBoot, CableTest):
    """test_cable.py's CableTest, unchanged, on usb4vhost + Debian's thunderbolt_stream:
    what was written against usb4vcable holds for the kernel's driver too."""


SUITE_ORDER = (VhostPairTest, VhostCableTest)


if __name__ == "__main__":
    sys.exit(test_cable.main(suite_order=SUITE_ORDER, description="virtual USB4 host tests"))
