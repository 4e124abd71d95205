#!/usr/bin/env python3
"""Robustness tests of the virtual USB4 host (usb4vhost.ko) under Debian's own, unmodified
thunderbolt_stream.ko: /dev/tbstreamN semantics, module reloads, PCI unbind, a peer that
dies or restarts, three VMs, refusing the real thunderbolt core, a fault soak.

Run with tests/vm/run-cable-tests.sh robust (it builds what is needed). Directly:
    USB4RESCUE_VM_KERNEL=... USB4RESCUE_VM_VHOST_INITRD=... USB4RESCUE_CABLE_CTL=... \\
        python3 tests/vm/test_robust.py [-k PATTERN] [-v]

USB4RESCUE_RELOADS (default 50) sets the reload cycles, USB4RESCUE_SOAK_S (default 25) the
soak's length. tests/vm/README.md says what each test checks. Every test fails if a guest's
kernel log shows Oops / BUG: / WARNING: / Call Trace.
"""
from __future__ import annotations

import os
import random
import re
import sys
import time
from pathlib import Path

sys.dont_write_bytecode = True   # no __pycache__ in the source tree
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import CFS, STOP_STREAMS, STOP_USERS, MiB, TBDEV, VMTestCase, field, log, vmpair  # noqa: E402
import test_cable  # noqa: E402
from test_cable import ENXIO_TEXT, CableTest, ChainTest  # noqa: E402
from test_vhost import MODULES, VhostBoot  # noqa: E402

RELOADS = int(os.environ.get("USB4RESCUE_RELOADS", "50"))
SOAK_S = float(os.environ.get("USB4RESCUE_SOAK_S", "25"))



class RobustTest(VhostBoot, VMTestCase):
    """alpha (side a) -- cable -- bravo (side b), usb4vhost + thunderbolt_stream in both."""

    vm_names = ("alpha", "bravo")
    cables = (("alpha", "bravo"),)
    vm_lifetime = 1800

    # CableTest's helpers: upstream-order stream set-up, background reader, received SHA.
    streams = CableTest.streams
    start_reader = CableTest.start_reader
    recv_sha = CableTest.recv_sha

    @classmethod
    def after_boot(cls):
        super().after_boot()
        CableTest.after_boot.__func__(cls)

    def reset(self):
        c = self.cable[("alpha", "bravo")]
        c.ctl("plug")
        c.ctl("rate", "--bytes-per-sec", "0")
        for v in self.vm.values():
            v.run(STOP_STREAMS, timeout=30, check=True)
        for n in self.vm_names:
            self.sh(n, "linkwait 30", timeout=60)

    def send_random(self, sender, job, idx, nbytes, bs="64k"):
        """Start writing `nbytes` random bytes into /dev/tbstream`idx` in the background,
        keeping it open afterwards until received() releases it; return their SHA-256.

        The kernel's driver drops what the peer has not taken 500 ms after the last close
        (CLOSE included: the reader would wait for ever), so a writer that closes at once
        loses data when the reader lags (seen with four streams under load): a writer has
        to know the peer has everything before it closes, as rescue's protocol does."""
        return field(self.sh(sender, f"""head -c {nbytes} /dev/urandom > /tmp/{job}.src
echo "@@R sha=$(sha256sum /tmp/{job}.src | cut -d' ' -f1)"
rm -f /tmp/{job}.release
bg {job} sh -c '{{ dd if=/tmp/{job}.src bs={bs} && until [ -e /tmp/{job}.release ]; do usleep 50000; done; }} > /dev/tbstream{idx}'
""", timeout=120), "sha")

    def received(self, sender, job, receiver, rjob, path, nbytes, timeout=120):
        """Wait until `receiver`'s file `path` has `nbytes`, let send_random()'s writer close
        (the reader gets EOF), and return the SHA-256 of what arrived (an extra byte would
        show)."""
        self.sh(receiver, f"waitfor {timeout} sh -c '[ $(stat -c %s {path}) -ge {nbytes} ]' || "
                          f"{{ ls -l {path}; bgwait {rjob} 1; exit 1; }}", timeout=timeout + 30)
        self.sh(sender, f"touch /tmp/{job}.release; bgwait {job} 30", timeout=60)
        return self.recv_sha(receiver, rjob, path, nbytes + 1)

    def kernel_clean(self, name):
        """Fail unless VM `name`'s kernel log is clean (for tests that kill a VM, where the
        harness skips its own check)."""
        v = self.vm[name]
        bad = [l for l in v.log_text()[self.log_marks.get(name, 0):].splitlines()
               if vmpair.BAD_KERNEL_RE.search(l)]
        bad += [l for l in self.sh(name, "badlog").splitlines() if l.strip()]
        self.assertFalse(bad, f"{name}: kernel log shows a bug:\n  " + "\n  ".join(bad[:30]))

    def known_ring_free_warning(self, name):
        """thunderbolt_stream stops and frees an open stream's rings only at its last close,
        even when the host (NHI) went away underneath (PCI unbind): tb_ring_free() then
        WARNs "ring still running", as the real NHI does (kmod/README.md, what the kernel's
        driver does differently). Fail on anything else in VM `name`'s kernel log; then
        clear the log, so the check after the test does not count that WARN."""
        v = self.vm[name]
        dmesg = self.sh(name, "dmesg")
        bad = [l for l in dmesg.splitlines() if vmpair.BAD_KERNEL_RE.search(l)]
        other = [l for l in bad if not re.search(r"WARNING: .* at tb_ring_free|Call Trace:", l)]
        self.assertFalse(other, f"{name}: kernel log shows a bug:\n  " + "\n  ".join(other[:30]))
        if bad:
            self.assertIn("tbstream_dev_stop", dmesg, "tb_ring_free WARN not from thunderbolt_stream's close")
            warns = len([l for l in bad if "WARNING" in l])
            log(f"{name}: {warns} x tb_ring_free 'still running' WARN (rings freed at the last "
                "close after the host went away)")
            # the console lags behind dmesg: let it show every trace before moving the mark
            end = time.monotonic() + 20
            while (v.log_text()[self.log_marks.get(name, 0):].count("---[ end trace") < warns
                   and time.monotonic() < end):
                time.sleep(0.2)
        self.sh(name, "dmesg -c >/dev/null")
        self.log_marks[name] = len(v.log_text())

    # ---- /dev/tbstreamN and ConfigFS
    def test_01_hopids_and_busy(self):
        """HopID writes: 7 and 16 (outside 8..maxhopid) fail, -1 allocates the lowest free,
        an explicit free one is taken, 0 releases; 8 streams take HopIDs 8..15, a 9th
        gets ENOSPC. While the stream is open, ring_size, in_hopid and throttling: EBUSY."""
        out = self.sh("alpha", f"""cd {CFS}
mkdir 0-1.0 && mkdir 0-1.0/h && cd 0-1.0/h || exit 1
echo "@@C in16 $(wr in_hopid 16)"
echo "@@C in7 $(wr in_hopid 7)"
echo "@@C in-1 $(wr in_hopid -1) $(cat in_hopid)"
echo "@@C in12 $(wr in_hopid 12) $(cat in_hopid)"
echo "@@C in0 $(wr in_hopid 0) $(cat in_hopid)"
cd ..
for i in 1 2 3 4 5 6 7 8 9; do mkdir s$i; echo "@@C s$i $(wr s$i/in_hopid -1) $(cat s$i/in_hopid)"; done
for i in 1 2 3 4 5 6 7 8 9; do rmdir s$i; done
rmdir h
""")
        got = dict(re.findall(r"^@@C (\S+) (.*)$", out, re.M))
        log("HopID writes: " + ", ".join(f"{k}: {v}" for k, v in got.items()))
        want = {"in-1": "ok 8", "in12": "ok 12", "in0": "ok 0", "s8": "ok 15",
                "s9": "ERR No space left on device 0"}
        errors = [f"{k}: got {got.get(k)!r}, expected {v!r}" for k, v in want.items() if got.get(k) != v]
        errors += [f"{k}: got {got.get(k)!r}, expected an error" for k in ("in16", "in7")
                   if not got.get(k, "").startswith("ERR")]
        self.assertFalse(errors, "\n".join(errors))
        irx, itx = self.streams("busy")
        self.sh("bravo", f"bg hold tbtest hold /dev/tbstream{irx} 30; waitopen /dev/tbstream{irx} 10")
        out = self.sh("bravo", f"""cd {CFS}/0-1.0/busy
echo "@@R ring_size=$(wr ring_size 64)"
echo "@@R in_hopid=$(wr in_hopid 9)"
echo "@@R throttling=$(wr throttling 1)"
""")
        for k in ("ring_size", "in_hopid", "throttling"):
            self.assertEqual(field(out, k), "ERR Device or resource busy", f"{k} written while open")

    def test_02_nonblock_poll_open(self):
        """O_NONBLOCK read without data: EAGAIN; poll: writable; O_NONBLOCK writes fill the
        path (a short write, then EAGAIN) while the peer holds its end open without
        reading; once the frames in flight have settled, poll shows nothing. Open of an
        unattached stream: ENXIO; of one without HopIDs: EINVAL. Both sides hold their end
        open in the background: each last close frees the rings (and sends CLOSE)."""
        irx, itx = self.streams("nb")
        self.sh("bravo", f"bg hold tbtest hold /dev/tbstream{irx} 30; waitopen /dev/tbstream{irx} 10")
        dev = f"/dev/tbstream{itx}"
        self.sh("alpha", f"bg hold tbtest hold {dev} 30; waitopen {dev} 10")
        out = self.sh("alpha", f"tbtest read-nb {dev}; tbtest poll {dev} 0; tbtest fill {dev}; "
                               f"usleep 500000; tbtest fill {dev}; tbtest poll {dev} 0")
        log("alpha: " + " | ".join(out.splitlines()))
        lines = out.splitlines()
        self.assertEqual(lines[0], "EAGAIN", "O_NONBLOCK read without data")
        self.assertEqual(lines[1], "1 OUT", "poll of an idle stream")
        sizes = lines[2].split()
        self.assertEqual(sizes[-1], "EAGAIN", "O_NONBLOCK writes never stopped")
        self.assertGreater(sum(int(s) for s in sizes[:-1]), 0)
        self.assertTrue(any(int(s) < MiB for s in sizes[:-1]), f"no short write before EAGAIN: {sizes}")
        self.assertEqual(lines[3].split()[-1], "EAGAIN", "second fill")
        self.assertEqual(lines[4], "0", "poll with the path full")
        out = self.sh("alpha", f"""{STOP_USERS}
mkdir -p {CFS}/0-7.0/x {CFS}/0-1.0/nohop
tbtest open-nb /dev/tbstream$(cat {CFS}/0-7.0/x/index)
tbtest open-nb /dev/tbstream$(cat {CFS}/0-1.0/nohop/index)
rmdir {CFS}/0-7.0/x {CFS}/0-7.0 {CFS}/0-1.0/nohop""")
        self.assertEqual(out.split(), ["ENXIO", "EINVAL"], "open of unattached / HopID-less streams")

    def test_03_frames_split_across_reads(self):
        """Writes of 10000 bytes (frames are 4 KiB) read with 1000-byte and 6000-byte
        reads and, for a short message, 1-byte reads: every byte once, in order."""
        for bs, size in (("1000", 1234567), ("6000", 1234567), ("1", 20000)):
            job = f"sp{bs}"   # stream names: at most 8 characters
            irx, itx = self.streams(job)
            self.start_reader("bravo", job, irx, f"/tmp/{job}.rx", bs=bs)
            sha = self.send_random("alpha", f"{job}tx", itx, size, bs="10000")
            got = self.received("alpha", f"{job}tx", "bravo", job, f"/tmp/{job}.rx", size)
            self.assertEqual(got, sha, f"reads of {bs} bytes: data differs")

    def test_04_four_streams_at_once(self):
        """Two streams each way (alpha -> bravo s1 s2, bravo -> alpha s3 s4), 4 MiB each,
        all at the same time: all intact."""
        size = 4 * MiB
        jobs = []
        for s, rx, tx in (("s1", "bravo", "alpha"), ("s2", "bravo", "alpha"),
                          ("s3", "alpha", "bravo"), ("s4", "alpha", "bravo")):
            irx, itx = self.streams(s, receiver=rx, sender=tx)
            self.start_reader(rx, s, irx, f"/tmp/{s}.rx")
            jobs.append((s, rx, tx, itx))
        sums = {s: self.send_random(tx, f"{s}tx", itx, size) for s, rx, tx, itx in jobs}
        for s, rx, tx, _ in jobs:
            got = self.received(tx, f"{s}tx", rx, s, f"/tmp/{s}.rx", size, timeout=300)
            self.assertEqual(got, sums[s], f"stream {s} differs")

    def test_05_ring_size_and_throttling(self):
        """ring_size 32 (the smallest: 31 TX frames in flight) and 1024 with throttling set,
        on both sides before open: read back, 4 MiB intact each; the times are logged."""
        size = 4 * MiB
        for rs, thr in ((32, 128), (1024, 16776960)):
            job = f"rs{rs}"
            irx, itx = self.streams(job)
            for n in self.vm_names:
                out = self.sh(n, f"""cd {CFS}/{self.svc[n]}/{job} && echo {rs} > ring_size && echo {thr} > throttling || exit 1
echo "@@R rt=$(cat ring_size) $(cat throttling)"
""")
                self.assertEqual(field(out, "rt"), f"{rs} {thr}", n)
            self.start_reader("bravo", job, irx, f"/tmp/{job}.rx")
            t0 = time.monotonic()
            sha = self.send_random("alpha", f"{job}tx", itx, size, bs="256k")
            self.assertEqual(self.received("alpha", f"{job}tx", "bravo", job, f"/tmp/{job}.rx", size), sha,
                             f"ring_size {rs}: data differs")
            log(f"ring_size {rs}, throttling {thr}: 4 MiB in {time.monotonic() - t0:.1f}s")

    def test_06_blocking_open_waits_for_replug(self):
        """Unplugged: O_NONBLOCK open gives ENXIO, a blocking open waits; it returns once
        the cable is plugged again (the group re-attaches) and the stream works."""
        irx, itx = self.streams("bo")
        c = self.cable[("alpha", "bravo")]
        c.ctl("unplug")
        self.sh("alpha", f"waitfor 15 sh -c '! [ -e {TBDEV}/0-1 ]'", timeout=30)
        self.assertEqual(self.rc("alpha", f"tbtest open-nb /dev/tbstream{itx}")[1].strip(), "ENXIO")
        self.sh("alpha", f"bg open tbtest open /dev/tbstream{itx}; usleep 1000000; "
                         f"[ ! -f /tmp/bg.open.rc ] || {{ cat /tmp/bg.open.out; exit 1; }}")
        c.ctl("plug")
        out = self.sh("alpha", "bgwait open 30", timeout=60)
        self.assertEqual(out.strip(), "ok", "blocking open after replug")
        self.sh("bravo", "linkwait 30", timeout=60)
        self.start_reader("bravo", "rx", irx, "/tmp/bo.rx")
        sha = self.send_random("alpha", "tx", itx, MiB)
        self.assertEqual(self.received("alpha", "tx", "bravo", "rx", "/tmp/bo.rx", MiB), sha)

    def test_07_stop_releases_streams(self):
        """STOP_STREAMS (every reset runs it) leaves thunderbolt_stream nothing: a reader
        loop on a stream the peer does not have (each last close waits 1 s for the rings)
        is stopped, and at once afterwards the module holds no file and no group. Streams
        made right then own the HopIDs they adopt: 2 s later (every close of before is
        over) a third group cannot take the sender's input HopID."""
        conn = self.svc["alpha"]
        ia = self.sh("alpha", f"mkstream {conn} lone -1 -1").split()[0]
        self.sh("alpha", f"bg loop sh -c 'while :; do dd if=/dev/tbstream{ia} bs=64k 2>/dev/null "
                         f"| wc -c >/dev/null; done'; waitopen /dev/tbstream{ia} 10")
        out = self.sh("alpha", f"""{STOP_STREAMS}
echo "@@R refcnt=$(cat /sys/module/thunderbolt_stream/refcnt)"
echo "@@R readers=$(pidof dd | wc -w)"
""", timeout=60)
        self.assertEqual(field(out, "refcnt"), "0", "thunderbolt_stream still holds a stream")
        self.assertEqual(field(out, "readers"), "0", "a reader outlived STOP_STREAMS")
        self.streams("fresh")
        out = self.sh("alpha", f"""usleep 2000000
mkdir {CFS}/{conn}/probe
echo "@@R probe=$(wr {CFS}/{conn}/probe/in_hopid $(cat {CFS}/{conn}/fresh/in_hopid))"
rmdir {CFS}/{conn}/probe""")
        self.assertEqual(field(out, "probe"), "ERR Device or resource busy",
                         "the new stream shows an input HopID it does not own")

    # ---- the host under the driver
    def test_10_reload50(self):
        """On bravo, RELOADS times: load usb4vhost and thunderbolt_stream, set up a stream
        (HopIDs from alpha), write into it, check thunderbolt_stream cannot be removed while
        open, stop the writer, remove the group and both modules. alpha keeps a reader
        reopening all along: it must have received data."""
        ia = self.sh("alpha", "mkstream 0-1.0 keep -1 -1").split()[0]
        self.sh("alpha", f"bg reader sh -c 'while :; do dd if=/dev/tbstream{ia} bs=64k 2>/dev/null "
                         f"| wc -c >> /tmp/reads; done'")
        self.sh("bravo", "rmstreams && rmmod thunderbolt_stream && rmmod usb4vhost")
        t0 = time.monotonic()
        out = self.sh("bravo", f"""fail() {{ echo "@@R fail=$*"; dmesg | tail -20; exit 1; }}
i=0
while [ $i -lt {RELOADS} ]; do
  i=$((i + 1))
  insmod /lib/modules/usb4vhost.ko side=b || fail "insmod usb4vhost $i"
  insmod /lib/modules/thunderbolt_stream.ko || fail "insmod thunderbolt_stream $i"
  waitfor 20 [ -e {TBDEV}/0-1.0 ] >/dev/null || fail "no service in cycle $i"
  mkdir {CFS}/0-1.0 {CFS}/0-1.0/keep || fail "mkdir $i"
  # alpha's HopIDs reach us with its properties, a moment after the service appears
  j=0
  while [ "$(cat {CFS}/0-1.0/keep/out_hopid)" -le 0 ]; do
    [ $j -lt 100 ] || fail "HopIDs not adopted in cycle $i"
    rmdir {CFS}/0-1.0/keep; usleep 50000; mkdir {CFS}/0-1.0/keep; j=$((j + 1))
  done
  dd if=/dev/zero of=/dev/tbstream$(cat {CFS}/0-1.0/keep/index) bs=64k count=100000 2>/dev/null &
  w=$!
  usleep 300000
  rmmod thunderbolt_stream 2>/dev/null && fail "rmmod thunderbolt_stream with a stream open ($i)"
  kill $w; wait $w 2>/dev/null
  rmdir {CFS}/0-1.0/keep {CFS}/0-1.0 || fail "rmdir $i"
  rmmod thunderbolt_stream || fail "rmmod thunderbolt_stream $i"
  rmmod usb4vhost || fail "rmmod usb4vhost $i"
done
echo "@@R cycles=$i"
insmod /lib/modules/usb4vhost.ko side=b && insmod /lib/modules/thunderbolt_stream.ko && linkwait 30
""", timeout=60 + 20 * RELOADS)
        dt = time.monotonic() - t0
        self.assertEqual(field(out, "cycles"), str(RELOADS), out)
        self.sh("alpha", "linkwait 30", timeout=60)
        reads = self.sh("alpha", f"{STOP_USERS}; cat /tmp/reads").split()
        got = sum(int(x) for x in reads)
        log(f"{RELOADS} reload cycles in {dt:.1f}s ({dt / RELOADS:.2f}s each); alpha's reader "
            f"opened {len(reads)} times and got {got // MiB} MiB")
        self.assertGreater(got, 0, "no data reached alpha during the reloads")

    def test_11_pci_unbind(self):
        """Unbinding alpha's ivshmem device from usb4vhost while data flows: alpha's writer
        gets ENXIO, bravo's reader fails; bind again: the groups re-attach and data flows."""
        irx, itx = self.streams("pci")
        self.start_reader("bravo", "rx", irx, "/dev/null")
        self.sh("alpha", f"bg tx dd if=/dev/zero of=/dev/tbstream{itx} bs=64k; usleep 500000")
        dev = self.sh("alpha", f"basename $(dirname $(readlink -f {TBDEV}/domain0))").strip()
        self.sh("alpha", f"echo {dev} > /sys/bus/pci/drivers/usb4vhost/unbind")
        rc, out = self.rc("alpha", "bgwait tx 20", timeout=40)
        self.assertNotEqual(rc, 124, "writer still blocked 20 s after unbind")
        self.assertIn(ENXIO_TEXT, out, f"writer after unbind: rc={rc} {out}")
        rc, out = self.rc("bravo", "bgwait rx 20", timeout=40)
        self.assertNotEqual(rc, 124, "peer's reader still blocked 20 s after unbind")
        self.assertNotEqual(rc, 0, f"peer's reader after unbind: {out}")
        self.known_ring_free_warning("alpha")
        self.sh("alpha", f"echo {dev} > /sys/bus/pci/drivers/usb4vhost/bind")
        for n in self.vm_names:
            self.sh(n, "linkwait 30", timeout=60)
        self.start_reader("bravo", "rx2", irx, "/tmp/pci.rx")
        sha = self.send_random("alpha", "tx2", itx, MiB)
        self.assertEqual(self.received("alpha", "tx2", "bravo", "rx2", "/tmp/pci.rx", MiB), sha)

    def test_20_soak(self):
        """SOAK_S seconds of transfers both ways while the host unplugs/replugs, corrupts
        frames and changes the rate at random (seeded); then the link comes back and a new
        stream carries 1 MiB intact. Kernel health is checked as after every test."""
        irx, itx = self.streams("x")
        irx2, itx2 = self.streams("y", receiver="alpha", sender="bravo")
        loop = "bg {job} sh -c 'while :; do {cmd} 2>/dev/null; usleep 100000; done'"
        self.sh("bravo", loop.format(job="r1", cmd=f"dd if=/dev/tbstream{irx} of=/dev/null bs=64k"))
        self.sh("alpha", loop.format(job="r2", cmd=f"dd if=/dev/tbstream{irx2} of=/dev/null bs=64k"))
        self.sh("alpha", loop.format(job="w1", cmd=f"dd if=/dev/zero of=/dev/tbstream{itx} bs=64k count=2000"))
        self.sh("bravo", loop.format(job="w2", cmd=f"dd if=/dev/zero of=/dev/tbstream{itx2} bs=4k count=20000"))
        c = self.cable[("alpha", "bravo")]
        rnd = random.Random(1)
        n, end = 0, time.monotonic() + SOAK_S
        while time.monotonic() < end:
            op = rnd.choice(["unplug", "corrupt", "rate", "rate0", "sleep", "sleep"])
            if op == "unplug":
                c.ctl("unplug")
                time.sleep(rnd.uniform(0.05, 1.0))
                c.ctl("plug")
            elif op == "corrupt":
                c.ctl("corrupt", "--dir", rnd.choice(["a2b", "b2a"]), "--frames", str(rnd.randint(1, 5)))
            elif op == "rate":
                c.ctl("rate", "--bytes-per-sec", str(rnd.choice([1 << 20, 8 << 20, 64 << 20])))
            elif op == "rate0":
                c.ctl("rate", "--bytes-per-sec", "0")
            time.sleep(rnd.uniform(0.1, 1.5))
            n += 1
        c.ctl("plug")
        c.ctl("rate", "--bytes-per-sec", "0")
        st = c.ctl("status")
        log(f"soak {SOAK_S:.0f}s: {n} faults; " + " | ".join(l.strip() for l in st.splitlines() if "tx " in l))
        for v in self.vm_names:
            self.sh(v, f"{STOP_STREAMS}; linkwait 30", timeout=60)
        irx, itx = self.streams("after")
        self.start_reader("bravo", "rx", irx, "/tmp/after.rx")
        sha = self.send_random("alpha", "tx", itx, MiB)
        self.assertEqual(self.received("alpha", "tx", "bravo", "rx", "/tmp/after.rx", MiB), sha, "after the soak")

    # ---- tests that kill a VM (the next test reboots)
    def test_90_heartbeat(self):
        """bravo's QEMU is killed while alpha writes: alpha notices the missing heartbeat
        (hb_timeout_ms 1500), the XDomain goes and the writer fails."""
        irx, itx = self.streams("hb")
        self.start_reader("bravo", "rx", irx, "/dev/null")
        self.sh("alpha", f"bg tx dd if=/dev/zero of=/dev/tbstream{itx} bs=64k; usleep 1000000")
        self.expect_gone = True
        self.vm["bravo"].kill()
        t0 = time.monotonic()
        self.sh("alpha", f"waitfor 20 sh -c '! [ -e {TBDEV}/0-1 ]'", timeout=40)
        dt = time.monotonic() - t0
        rc, out = self.rc("alpha", "bgwait tx 20", timeout=40)
        log(f"peer killed: alpha's 0-1 gone after {dt:.1f}s; writer rc={rc} {out.strip()[-80:]}")
        self.assertLess(dt, 10, "the dead peer was not noticed (hb_timeout_ms is 1.5 s)")
        self.assertNotIn(rc, (0, 124), f"writer after the peer died: {out}")
        self.kernel_clean("alpha")

    def test_91_restart_auto(self):
        """bravo dies; a new VM (charlie) on the same cable with side=auto claims the side
        bravo left (its heartbeat stale) and alpha sees charlie as its peer; data flows."""
        self.expect_gone = True
        self.vm["bravo"].kill()
        self.sh("alpha", f"waitfor 20 sh -c '! [ -e {TBDEV}/0-1 ]'", timeout=40)
        c = self.rig.vm("charlie")
        c.start(self.kernel, self.initrd, append=f"vm.noload={MODULES}", timeout=self.vm_lifetime,
                cables=[(self.cable[("alpha", "bravo")], "b")])
        c.wait_ready(self.boot_timeout)
        c.run("insmod /lib/modules/usb4vhost.ko side=auto && insmod /lib/modules/thunderbolt_stream.ko "
              "&& linkwait 30", timeout=90, check=True)
        self.sh("alpha", "linkwait 30", timeout=60)
        self.assertEqual(self.sh("alpha", f"cat {TBDEV}/0-1/device_name").strip(), "charlie")
        self.vm["charlie"] = c
        self.svc["charlie"] = "0-1.0"
        try:
            irx, itx = self.streams("re", receiver="charlie")
            self.start_reader("charlie", "rx", irx, "/tmp/re.rx")
            sha = self.send_random("alpha", "tx", itx, MiB)
            self.assertEqual(self.received("alpha", "tx", "charlie", "rx", "/tmp/re.rx", MiB), sha)
            self.kernel_clean("alpha")
            self.kernel_clean("charlie")
        finally:
            del self.vm["charlie"]


class VhostChainTest(VhostBoot, ChainTest):
    """test_cable.py's ChainTest (alpha -- bravo -- charlie, bravo with two cables and two
    domains) on usb4vhost + thunderbolt_stream."""


class RefuseTest(VMTestCase):
    """One VM: usb4vhost refuses to load beside the real thunderbolt core, and the real
    core cannot load beside usb4vhost."""

    vm_names = ("solo",)
    cables = ()
    noload = MODULES
    needs = ("usb4vhost", "thunderbolt")
    initrd_env = "USB4RESCUE_VM_VHOST_INITRD"

    def test_01_refuse_with_thunderbolt(self):
        out = self.sh("solo", """insmod /lib/modules/thunderbolt.ko || exit 1
insmod /lib/modules/usb4vhost.ko 2>&1; echo "@@R vhost_rc=$?"
echo "@@R msg=$(dmesg | grep usb4vhost | tail -1)"
rmmod thunderbolt || exit 1
insmod /lib/modules/usb4vhost.ko || exit 1
insmod /lib/modules/thunderbolt.ko 2>&1; echo "@@R tb_rc=$?"
rmmod usb4vhost
""")
        self.assertNotEqual(field(out, "vhost_rc"), "0", "usb4vhost loaded beside thunderbolt")
        log(f"usb4vhost beside thunderbolt: {field(out, 'msg')}")
        self.assertIn("thunderbolt", field(out, "msg"), "no message naming thunderbolt")
        self.assertNotEqual(field(out, "tb_rc"), "0", "thunderbolt loaded beside usb4vhost")

    def reset(self):
        pass


SUITE_ORDER = (RefuseTest, RobustTest, VhostChainTest)


if __name__ == "__main__":
    sys.exit(test_cable.main(suite_order=SUITE_ORDER, description="virtual USB4 host robustness tests"))
