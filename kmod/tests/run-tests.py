#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Paired-VM checks of usb4vcable (ad hoc; the project's end-to-end tests live in tests/vm).

    kmod/tests/run-tests.py [TEST ...]        (default: all; --list to list)

Needs: scripts/fetch-kernel.sh (kernel), scripts/build-kmod.sh (module), cable-ctl built
(CARGO_TARGET_DIR=/tmp/target-kmod cargo build -p cable-ctl). Runs as root (QEMU TCG).
Every test also fails if a guest console shows an oops, WARN, BUG or hung task.
"""
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vcpair import Rig  # noqa: E402

CFS = "/sys/kernel/config/thunderbolt/stream"
TB = "/sys/bus/thunderbolt/devices"
TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


class Fail(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Fail(msg)


def sh(vm, script, timeout=120):
    rc, out = vm.run(script, timeout=timeout)
    return out.strip()


def wait_link(vm, present=True, timeout=20):
    end = time.time() + timeout
    while time.time() < end:
        out = sh(vm, f"test -e {TB}/0-1.0 && echo yes || echo no")
        if (out == "yes") == present:
            return
        time.sleep(0.2)
    raise Fail(f"{vm.name}: 0-1.0 {'never appeared' if present else 'still there'}")


def pair(rig):
    a = rig.vm("alpha", "usb4vcable.side=a")
    b = rig.vm("beta", "usb4vcable.side=b")
    rig.wait_ready()
    wait_link(a)
    wait_link(b)
    return a, b


def setup_recv(vm, name="backup"):
    """Receiver side of the upstream example: automatic HopIDs."""
    return sh(vm, f"mkdir -p {CFS}/0-1.0 && mkdir {CFS}/0-1.0/{name} && "
              f"echo -1 > {CFS}/0-1.0/{name}/in_hopid && echo -1 > {CFS}/0-1.0/{name}/out_hopid && "
              f"cat {CFS}/0-1.0/{name}/index")


def zero_flow(rig, count):
    """A pair with a stream each way set up and `count` 64 KiB blocks of zeros
    flowing a -> b in the background (jobs "rx" on b, "tx" on a). Returns
    (a, b, a's stream index, b's stream index)."""
    a, b = pair(rig)
    bi = setup_recv(b)
    ai = setup_send(a)
    bg(b, "rx", f"dd if=/dev/tbstream{bi} of=/dev/null bs=64k")
    time.sleep(0.3)
    bg(a, "tx", f"dd if=/dev/zero of=/dev/tbstream{ai} bs=64k count={count}")
    return a, b, ai, bi


def setup_send(vm, name="backup"):
    """Sender side: no HopIDs, adopted from the peer's properties."""
    out = sh(vm, f"mkdir -p {CFS}/0-1.0 && mkdir {CFS}/0-1.0/{name} && "
             f"cat {CFS}/0-1.0/{name}/index {CFS}/0-1.0/{name}/in_hopid {CFS}/0-1.0/{name}/out_hopid")
    idx, hin, hout = out.split()
    check(int(hin) > 0 and int(hout) > 0, f"sender did not adopt HopIDs: {out}")
    return idx


def bgwait(vm, name, timeout=120):
    end = time.time() + timeout
    while time.time() < end:
        out = sh(vm, f"cat /tmp/{name}.rc 2>/dev/null")
        if out != "":
            return int(out), sh(vm, f"cat /tmp/{name}.out")
        time.sleep(0.3)
    raise Fail(f"{vm.name}: background job {name} did not finish")


def bg(vm, name, cmd):
    # Detached from the command tty (ttyS1) entirely: a job that holds it breaks the loop.
    sh(vm, f"rm -f /tmp/{name}.rc; ( ( {cmd} ) > /tmp/{name}.out 2>&1; echo $? > /tmp/{name}.rc ) "
       f"</dev/null >/dev/null 2>&1 & echo $! > /tmp/{name}.pid")


@test
def t_sysfs(rig):
    a, b = pair(rig)
    for v, peer in ((a, b), (b, a)):
        out = sh(v, f"cd {TB}; for f in domain0/security domain0/iommu_dma_protection "
                 "0-0/unique_id 0-0/device_name 0-1/device_name 0-1/unique_id 0-1/vendor_name "
                 "0-1/rx_speed 0-1/tx_speed 0-1/rx_lanes 0-1/tx_lanes 0-1/maxhopid 0-1.0/key "
                 "0-1.0/prtcid 0-1.0/prtcvers 0-1.0/prtcrevs 0-1.0/prtcstns 0-1.0/modalias; "
                 "do echo \"$f=$(cat $f)\"; done; basename $(readlink 0-1.0/driver); "
                 "ls /sys/bus/thunderbolt/devices | tr '\\n' ' '")
        print(out)
        d = dict(l.split("=", 1) for l in out.splitlines() if "=" in l)
        check(d["domain0/security"] == "user", "security")
        check(d["domain0/iommu_dma_protection"] == "1", "iommu")
        check(d["0-0/device_name"] == v.name, "0-0 device_name")
        check(d["0-1/device_name"] == peer.name, "0-1 device_name")
        check(d["0-1.0/key"] == "stream" and d["0-1.0/prtcid"] == "1", "service")
        check(d["0-1.0/modalias"] == "tbsvc:kstreamp00000001v00000001r00000000", "modalias")
        check(re.fullmatch(r"\d+\.0 Gb/s", d["0-1/rx_speed"]) is not None, "rx_speed")
        check("thunderbolt_stream" in out, "driver link")
        v.uid = d["0-0/unique_id"]
        v.peer_uid = d["0-1/unique_id"]
    check(a.uid == b.peer_uid and b.uid == a.peer_uid, "UUIDs do not cross-match")


@test
def t_configfs_errors(rig):
    a, b = pair(rig)
    out = sh(a, f"""
w() {{ sh -c "echo $1 > $2" 2>&1; }}
cd {CFS}
mkdir foo 2>&1; echo "bad-name rc=$?"
mkdir 0-1.0 && mkdir 0-1.0/abcdefghi 2>&1; echo "toolong rc=$?"
mkdir 0-1.0/abcdefgh; echo "8chars rc=$?"
cd 0-1.0/abcdefgh
for v in 31 4097 32 4096; do echo $v > ring_size 2>/dev/null; echo "ring_size $v rc=$?"; done
for v in 16776961 16776960 0; do echo $v > throttling 2>/dev/null; echo "throttling $v rc=$?"; done
w 16 in_hopid; echo "in16 rc=$?"
echo 7 > in_hopid 2>&1; echo "in7 rc=$?"
echo -1 > in_hopid; echo "in-1 rc=$? $(cat in_hopid)"
w $(cat in_hopid) in_hopid; echo "same rc=$? $(cat in_hopid)"
echo 12 > in_hopid; echo "in12 rc=$? $(cat in_hopid)"
echo 0 > in_hopid; echo "in0 rc=$? $(cat in_hopid)"
cd ..
for i in 1 2 3 4 5 6 7 8 9; do mkdir s$i; w -1 s$i/in_hopid; echo "s$i rc=$? $(cat s$i/in_hopid)"; done
for i in 1 2 3 4 5 6 7 8 9; do rmdir s$i; done
""")
    print(out)
    for pat in ("bad-name rc=1", "Invalid argument", "toolong rc=1", "too long", "8chars rc=0",
                "ring_size 31 rc=1", "ring_size 4097 rc=1", "ring_size 32 rc=0",
                "ring_size 4096 rc=0", "throttling 16776961 rc=1", "throttling 16776960 rc=0",
                "in16 rc=1", "in7 rc=1", "in-1 rc=0 8", "same rc=1 8", "Device or resource busy",
                "in12 rc=0 12", "in0 rc=0 0", "s8 rc=0 15", "s9 rc=1 0",
                "No space left on device"):
        check(pat in out, f"expected {pat!r}")
    # EBUSY while open
    setup_recv(b, "busy")
    setup_send(a, "busy")
    ai = sh(a, f"cat {CFS}/0-1.0/busy/index")
    bg(a, "hold", f"tbtest hold /dev/tbstream{ai} 3")
    time.sleep(1)
    out = sh(a, f"cd {CFS}/0-1.0/busy; echo 64 > ring_size 2>&1; echo rs=$?; "
             "echo 9 > in_hopid 2>&1; echo in=$?; echo 1 > throttling 2>&1; echo th=$?")
    print(out)
    check("rs=1" in out and "in=1" in out and "th=1" in out, "EBUSY while open")
    bgwait(a, "hold")


@test
def t_upstream_example(rig):
    a, b = pair(rig)
    bi = setup_recv(b)
    ai = setup_send(a)
    sh(a, "dd if=/dev/urandom of=/tmp/src bs=1M count=64 2>/dev/null; sha256sum /tmp/src > /tmp/src.sum",
       timeout=300)
    bg(b, "rx", f"dd if=/dev/tbstream{bi} of=/tmp/out bs=256k")
    time.sleep(0.5)
    t = time.time()
    out = sh(a, f"time dd if=/tmp/src of=/dev/tbstream{ai} bs=256k 2>&1", timeout=600)
    print(out, f"(host {time.time() - t:.2f}s)")
    rc, out = bgwait(b, "rx", 300)
    check(rc == 0, f"receiver dd failed: {out}")
    s1 = sh(a, "cut -d' ' -f1 /tmp/src.sum")
    s2 = sh(b, "sha256sum /tmp/out | cut -d' ' -f1", timeout=300)
    print("sha256", s1, s2)
    check(s1 == s2, "sha256 differs")


@test
def t_eof_and_nonblock(rig):
    a, b = pair(rig)
    bi = setup_recv(b, "eof")
    ai = setup_send(a, "eof")
    for i in range(3):
        bg(b, "cat", f"cat /dev/tbstream{bi}")
        time.sleep(0.5)
        sh(a, f"echo hello{i} > /dev/tbstream{ai}")
        rc, out = bgwait(b, "cat", 20)
        check(rc == 0 and out == f"hello{i}", f"EOF cycle {i}: rc={rc} out={out!r}")
    # O_NONBLOCK read without data, poll, partial writes
    bg(b, "hold", f"tbtest hold /dev/tbstream{bi} 6")
    time.sleep(0.5)
    out = sh(a, f"tbtest read-nb /dev/tbstream{ai}; tbtest poll /dev/tbstream{ai} 0; "
             f"tbtest fill /dev/tbstream{ai}; tbtest poll /dev/tbstream{ai} 0")
    print(out)
    lines = out.splitlines()
    check(lines[0] == "EAGAIN", "read-nb")
    check(lines[1] == "1 OUT", "poll writable")
    sizes = lines[2].split()
    check(sizes[-1] == "EAGAIN" and 0 < int(sizes[0]) < 1 << 20, "partial write then EAGAIN")
    check(lines[3] == "0", "poll full ring")
    out = sh(b, f"sleep 1; cat /tmp/hold.out; tbtest poll /dev/tbstream{bi} 0")
    rc, _ = bgwait(b, "hold", 20)
    # open semantics: ENXIO (not attached) and EINVAL (HopIDs unset)
    out = sh(a, f"mkdir -p {CFS}/0-7.0/x {CFS}/0-1.0/nohop; "
             f"tbtest open-nb /dev/tbstream$(cat {CFS}/0-7.0/x/index); "
             f"tbtest open-nb /dev/tbstream$(cat {CFS}/0-1.0/nohop/index); "
             f"rmdir {CFS}/0-7.0/x {CFS}/0-7.0 {CFS}/0-1.0/nohop")
    print(out)
    check(out.splitlines() == ["ENXIO", "EINVAL"], "open errors")


@test
def t_bidir_multi(rig):
    a, b = pair(rig)
    bi1 = setup_recv(b, "s1")
    ai1 = setup_send(a, "s1")
    ai2 = setup_recv(a, "s2")
    bi2 = setup_send(b, "s2")
    sh(a, "dd if=/dev/urandom of=/tmp/x bs=1M count=16 2>/dev/null", timeout=120)
    sh(b, "dd if=/dev/urandom of=/tmp/y bs=1M count=16 2>/dev/null", timeout=120)
    # s1 both ways and s2 both ways at once
    bg(b, "r1", f"cat /dev/tbstream{bi1} > /tmp/r1")
    bg(a, "r2", f"cat /dev/tbstream{ai2} > /tmp/r2")
    time.sleep(0.5)
    bg(a, "w1", f"cat /tmp/x > /dev/tbstream{ai1}")
    bg(b, "w2", f"cat /tmp/y > /dev/tbstream{bi2}")
    for v, n in ((a, "w1"), (b, "w2"), (b, "r1"), (a, "r2")):
        rc, out = bgwait(v, n, 300)
        check(rc == 0, f"{v.name} {n}: {out}")
    x = sh(a, "sha256sum < /tmp/x; sha256sum < /tmp/r2", timeout=120).split()
    y = sh(b, "sha256sum < /tmp/y; sha256sum < /tmp/r1", timeout=120).split()
    check(x[0] == y[2] and y[0] == x[2], f"bidirectional data differs {x} {y}")


@test
def t_unplug_replug(rig):
    a, b, ai, bi = zero_flow(rig, 100000)
    time.sleep(2)
    rig.ctl("unplug")
    t = time.time()
    rc1, o1 = bgwait(a, "tx", 20)
    rc2, o2 = bgwait(b, "rx", 20)
    print(f"after unplug ({time.time() - t:.2f}s): tx rc={rc1} {o1!r}; rx rc={rc2} {o2!r}")
    check(rc1 != 0 and "No such device or address" in o1, "writer did not get ENXIO")
    check(rc2 != 0 and "No such device or address" in o2, "reader did not get ENXIO")
    wait_link(a, False, 5)
    wait_link(b, False, 5)
    out = sh(a, f"ls {TB}; tbtest open-nb /dev/tbstream{ai}")
    check("ENXIO" in out and "0-1" not in out, f"unplugged state: {out}")
    # blocking open waits for the replug
    bg(a, "open", f"tbtest open /dev/tbstream{ai}")
    time.sleep(1)
    check(sh(a, "cat /tmp/open.rc 2>/dev/null") == "", "blocking open returned while unplugged")
    # a blocked open must not hold any global lock: mkdir/rmdir/open of others still work
    out = sh(a, f"mkdir {CFS}/0-1.0/other && tbtest open-nb /dev/tbstream$(cat {CFS}/0-1.0/other/index); "
             f"rmdir {CFS}/0-1.0/other && echo done", timeout=10)
    check(out.splitlines() == ["ENXIO", "done"], f"while an open blocks: {out!r}")
    rig.ctl("plug")
    rc, out = bgwait(a, "open", 10)
    check(rc == 0 and out == "ok", f"open after replug: {out}")
    wait_link(b)
    # Stream dirs survive; HopIDs were kept; data flows again.
    bg(b, "rx", f"cat /dev/tbstream{bi}")
    time.sleep(0.5)
    sh(a, f"echo again > /dev/tbstream{ai}")
    rc, out = bgwait(b, "rx", 20)
    check(out == "again", f"after replug: {out!r}")


@test
def t_corrupt(rig):
    a, b = pair(rig)
    bi = setup_recv(b)
    ai = setup_send(a)
    sh(a, "dd if=/dev/urandom of=/tmp/src bs=64k count=16 2>/dev/null")
    src = sh(a, "sha256sum < /tmp/src")
    for n, expect_same in ((0, True), (3, False)):
        if n:
            rig.ctl("corrupt", "--dir", "a2b", "--frames", str(n))
        bg(b, "rx", f"cat /dev/tbstream{bi} > /tmp/out")
        time.sleep(0.5)
        sh(a, f"cat /tmp/src > /dev/tbstream{ai}")
        bgwait(b, "rx", 60)
        out = sh(b, "sha256sum < /tmp/out; cmp -l /tmp/out /dev/null 2>/dev/null | head -1; "
                 "wc -c < /tmp/out")
        same = out.split()[0] == src.split()[0]
        print(f"corrupt {n}: same={same} size={out.split()[-1]}")
        check(same == expect_same, f"corrupt {n} frames: same={same}")
        check(out.split()[-1] == str(1 << 20), "size changed: frames were dropped")
    st = rig.ctl("status", "--json")
    print(sh(b, "dmesg | grep -c 'RX CRC error'"))
    check('"crc_errors": 3' in st, "crc_errors counter")
    check("RX CRC error" in b.console(), "no CRC error message")


@test
def t_rate(rig):
    a, b = pair(rig)
    bi = setup_recv(b)
    ai = setup_send(a)
    rig.ctl("rate", "--bytes-per-sec", str(2 << 20))
    bg(b, "rx", f"dd if=/dev/tbstream{bi} of=/dev/null bs=64k")
    time.sleep(0.3)
    t = time.time()
    sh(a, f"dd if=/dev/zero of=/dev/tbstream{ai} bs=64k count=128")   # 8 MiB
    rc, out = bgwait(b, "rx", 60)
    dt = time.time() - t
    print(f"8 MiB at 2 MiB/s: {dt:.2f}s ({out.splitlines()[-1]})")
    check(3.0 < dt < 8.0, f"rate cap not honoured: {dt:.2f}s")
    rig.ctl("rate", "--bytes-per-sec", "0")
    bg(b, "rx", f"dd if=/dev/tbstream{bi} of=/dev/null bs=64k")
    time.sleep(0.3)
    t = time.time()
    sh(a, f"dd if=/dev/zero of=/dev/tbstream{ai} bs=64k count=128")
    bgwait(b, "rx", 60)
    print(f"8 MiB unlimited: {time.time() - t:.2f}s")


@test
def t_heartbeat(rig):
    a, b, ai, bi = zero_flow(rig, 1000000)
    time.sleep(1.5)
    b.kill()
    t0 = time.time()
    out = sh(a, f"i=0; while [ -e {TB}/0-1 ]; do usleep 20000; i=$((i+1)); done; echo $((i*20))")
    dt = time.time() - t0
    rc, o = bgwait(a, "tx", 10)
    print(f"peer killed: 0-1 gone after {dt:.2f}s (guest ~{out} ms); writer rc={rc} {o.splitlines()[-1:]}")
    check(dt < 2.5, "heartbeat loss not noticed within 2 s")
    check(rc != 0, "writer did not fail")


@test
def t_reload50(rig):
    a, b = pair(rig)
    ai = setup_recv(a, "keep")
    # a keeps a reader open: it gets ENXIO at each unload of b, and reopens (blocking)
    bg(a, "reader", f"while :; do dd if=/dev/tbstream{ai} of=/dev/null bs=64k 2>/dev/null; "
       "echo x >> /tmp/reopens; done")
    n = int(__import__("os").environ.get("RELOADS", "50"))
    script = f"""
i=0
while [ $i -lt {n} ]; do
  i=$((i+1))
  insmod /lib/modules/usb4vcable.ko side=b || {{ echo "insmod $i failed"; exit 1; }}
  j=0; while [ ! -e {TB}/0-1.0 ] && [ $j -lt 100 ]; do usleep 50000; j=$((j+1)); done
  [ -e {TB}/0-1.0 ] || {{ echo "no link $i"; exit 1; }}
  mkdir -p {CFS}/0-1.0/keep
  idx=$(cat {CFS}/0-1.0/keep/index)
  j=0; while [ "$(cat {CFS}/0-1.0/keep/out_hopid)" -le 0 ] && [ $j -lt 40 ]; do
    rmdir {CFS}/0-1.0/keep; usleep 50000; mkdir {CFS}/0-1.0/keep; j=$((j+1)); done
  idx=$(cat {CFS}/0-1.0/keep/index)
  dd if=/dev/zero of=/dev/tbstream$idx bs=64k count=100000 2>/dev/null &
  w=$!
  usleep 300000
  rmmod usb4vcable 2>/dev/null && {{ echo "rmmod succeeded with a stream open ($i)"; exit 1; }}
  kill $w; wait $w 2>/dev/null
  rmdir {CFS}/0-1.0/keep {CFS}/0-1.0
  rmmod usb4vcable || {{ echo "rmmod $i failed"; exit 1; }}
done
echo "reloads ok $i"
"""
    sh(b, "rmmod usb4vcable")
    t = time.time()
    out = sh(b, script, timeout=1200)
    print(out, f"({time.time() - t:.1f}s)")
    check(f"reloads ok {n}" in out, "reload loop failed")
    check("objects leaked" not in b.console(), "leak reported at module exit")
    print("module exits without a leak report:", b.console().count("link down: driver removed"))
    print("reader reopened", sh(a, "wc -l < /tmp/reopens"), "times")
    sh(b, "insmod /lib/modules/usb4vcable.ko side=b")
    wait_link(a)
    wait_link(b)
    out = sh(b, "lsmod | grep usb4vcable; cat /proc/slabinfo 2>/dev/null | head -0")
    print(out)


@test
def t_refuse_with_thunderbolt(rig):
    v = rig.vm("gamma", "vc.noload=1")
    rig.wait_ready()
    out = sh(v, "insmod /lib/modules/thunderbolt.ko && echo tb-loaded; "
             "insmod /lib/modules/usb4vcable.ko; echo rc=$?; dmesg | grep usb4vcable | tail -2")
    print(out)
    check("tb-loaded" in out and "rc=0" not in out and "real 'thunderbolt' module" in out,
          "usb4vcable loaded next to thunderbolt")


@test
def t_pci_unbind(rig):
    a, b, ai, bi = zero_flow(rig, 1000000)
    time.sleep(1)
    dev = sh(a, "basename $(dirname $(readlink -f /sys/bus/thunderbolt/devices/domain0))")
    out = sh(a, f"echo {dev} > /sys/bus/pci/drivers/usb4vcable/unbind; echo rc=$?; "
             f"ls {TB} | tr '\\n' ' '")
    print("unbind:", out)
    rc, o = bgwait(a, "tx", 10)
    check(rc != 0 and "No such device or address" in o, f"writer after unbind: {o!r}")
    rc, o = bgwait(b, "rx", 10)
    check(rc != 0, f"reader after peer unbind: {o!r}")
    out = sh(a, f"echo {dev} > /sys/bus/pci/drivers/usb4vcable/bind; echo rc=$?")
    check("rc=0" in out, f"bind: {out}")
    wait_link(a)
    wait_link(b)
    bg(b, "rx", f"cat /dev/tbstream{bi}")
    time.sleep(0.5)
    sh(a, f"echo back > /dev/tbstream{ai}")
    rc, out = bgwait(b, "rx", 20)
    check(out == "back", f"after rebind: {out!r}")


@test
def t_restart_auto(rig):
    a = rig.vm("alpha")
    b = rig.vm("beta")
    rig.wait_ready()
    wait_link(a)
    b.kill()
    wait_link(a, False, 5)
    c = rig.vm("gamma")
    c.wait_for("@@READY", 90)
    t = time.time()
    wait_link(c, True, 15)
    print(f"restarted peer linked after {time.time() - t:.1f}s;",
          sh(a, f"cat {TB}/0-1/device_name"), rig.ctl("status").splitlines()[3:6])
    check(sh(a, f"cat {TB}/0-1/device_name") == "gamma", "peer name after restart")
    bi = setup_recv(c)
    ai = setup_send(a)
    bg(c, "rx", f"cat /dev/tbstream{bi}")
    time.sleep(0.5)
    sh(a, f"echo hi > /dev/tbstream{ai}")
    rc, out = bgwait(c, "rx", 20)
    check(out == "hi", f"data after restart: {out!r}")


@test
def t_three_vms(rig):
    bc = rig.shm + "-bc"
    rig.ctl("init", "--size", str(rig.size), shm=bc)
    a = rig.vm("alpha", "", cables=[rig.shm])
    b = rig.vm("beta", "", cables=[rig.shm, bc])
    c = rig.vm("gamma", "", cables=[bc])
    rig.wait_ready()
    wait_link(a)
    wait_link(b)
    end = time.time() + 20
    while sh(b, f"test -e {TB}/1-1.0 && echo y") != "y":
        check(time.time() < end, "1-1.0 missing on beta")
        time.sleep(0.3)
    print(sh(b, f"ls {TB}; cat {TB}/0-1/device_name {TB}/1-1/device_name"))
    names = sh(b, f"cat {TB}/0-1/device_name {TB}/1-1/device_name").split()
    check(sorted(names) == ["alpha", "gamma"], f"peers of beta: {names}")
    # a stream on each domain at once
    svc = {"alpha": "0-1.0", "gamma": "1-1.0"}
    for peer_vm in (a, c):
        bsvc = svc[peer_vm.name] if names[0] == peer_vm.name or names[1] == peer_vm.name else None
        bsvc = "0-1.0" if names[0] == peer_vm.name else "1-1.0"
        pi = sh(peer_vm, f"mkdir -p {CFS}/0-1.0/d && echo -1 > {CFS}/0-1.0/d/in_hopid && "
                f"echo -1 > {CFS}/0-1.0/d/out_hopid && cat {CFS}/0-1.0/d/index")
        bidx = sh(b, f"mkdir -p {CFS}/{bsvc}/d && cat {CFS}/{bsvc}/d/index {CFS}/{bsvc}/d/out_hopid")
        bi, bout = bidx.split()
        check(int(bout) > 0, f"beta {bsvc}: HopIDs not adopted")
        bg(peer_vm, "rx", f"cat /dev/tbstream{pi}")
        time.sleep(0.5)
        sh(b, f"echo to-{peer_vm.name} > /dev/tbstream{bi}")
        rc, out = bgwait(peer_vm, "rx", 20)
        check(out == f"to-{peer_vm.name}", f"{peer_vm.name} got {out!r}")


@test
def t_soak(rig):
    """Transfers in both directions while the host unplugs/replugs, corrupts and changes
    the rate at random; only kernel health and liveness are checked (SOAK_S seconds)."""
    import os
    import random
    a, b = pair(rig)
    bi = setup_recv(b, "x")
    ai = setup_send(a, "x")
    ai2 = setup_recv(a, "y")
    bi2 = setup_send(b, "y")
    loop = "while :; do {cmd} 2>/dev/null; usleep 100000; done"
    bg(b, "r1", loop.format(cmd=f"dd if=/dev/tbstream{bi} of=/dev/null bs=64k"))
    bg(a, "r2", loop.format(cmd=f"dd if=/dev/tbstream{ai2} of=/dev/null bs=64k"))
    bg(a, "w1", loop.format(cmd=f"dd if=/dev/zero of=/dev/tbstream{ai} bs=64k count=2000"))
    bg(b, "w2", loop.format(cmd=f"dd if=/dev/zero of=/dev/tbstream{bi2} bs=4k count=20000"))
    end = time.time() + float(os.environ.get("SOAK_S", "60"))
    rnd = random.Random(1)
    n = 0
    while time.time() < end:
        op = rnd.choice(["unplug", "corrupt", "rate", "rate0", "sleep", "sleep"])
        if op == "unplug":
            rig.ctl("unplug")
            time.sleep(rnd.uniform(0.05, 1.0))
            rig.ctl("plug")
        elif op == "corrupt":
            rig.ctl("corrupt", "--dir", rnd.choice(["a2b", "b2a"]), "--frames", str(rnd.randint(1, 5)))
        elif op == "rate":
            rig.ctl("rate", "--bytes-per-sec", str(rnd.choice([1 << 20, 8 << 20, 64 << 20])))
        elif op == "rate0":
            rig.ctl("rate", "--bytes-per-sec", "0")
        time.sleep(rnd.uniform(0.1, 1.5))
        n += 1
    rig.ctl("plug")
    rig.ctl("rate", "--bytes-per-sec", "0")
    wait_link(a)
    wait_link(b)
    st = rig.ctl("status")
    print(f"{n} faults injected;", " | ".join(l.strip() for l in st.splitlines() if "tx " in l))
    for v in (a, b):
        sh(v, "kill $(cat /tmp/r1.pid /tmp/r2.pid /tmp/w1.pid /tmp/w2.pid 2>/dev/null) 2>/dev/null; "
           "killall dd 2>/dev/null; true")


def main():
    args = sys.argv[1:]
    if "--list" in args:
        print("\n".join(t.__name__ for t in TESTS))
        return 0
    sel = [t for t in TESTS if not args or t.__name__ in args or t.__name__[2:] in args]
    results = []
    for t in sel:
        print(f"=== {t.__name__}", flush=True)
        t0 = time.time()
        try:
            with Rig() as rig:
                try:
                    t(rig)
                    bad = [l for v in rig.vms for l in v.bad_dmesg()]
                    if bad:
                        raise Fail("guest kernel trouble:\n" + "\n".join(bad[:20]))
                    res = "PASS"
                except Exception:
                    for v in rig.vms:
                        print(f"--- {v.name} console tail\n" + v.console()[-2500:])
                    raise
        except Exception as e:  # noqa: BLE001
            res = f"FAIL: {e}"
        print(f"=== {t.__name__}: {res} ({time.time() - t0:.1f}s)", flush=True)
        results.append((t.__name__, res))
    print("\nsummary:")
    for n, r in results:
        print(f"  {n}: {r.splitlines()[0]}")
    return 0 if all(r == "PASS" for _, r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
