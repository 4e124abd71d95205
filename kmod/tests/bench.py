#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""usb4vcable figures under TCG: raw dd throughput across the cable and the CPU use of
an idle cable (host CPU of each QEMU process and the guest's poller thread).
Run through kmod/bench.sh."""
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import importlib.util  # noqa: E402

from vcpair import Rig  # noqa: E402

spec = importlib.util.spec_from_file_location("rt", Path(__file__).parent / "run-tests.py")
rt = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rt)

MIB = int(os.environ.get("BENCH_MIB", "256"))
IDLE_S = float(os.environ.get("BENCH_IDLE_S", "10"))
TICK = os.sysconf("SC_CLK_TCK")


def qemu_cpu(vm):
    f = open(f"/proc/{vm.proc.pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICK


def idle_cpu(vms, seconds):
    c0 = [qemu_cpu(v) for v in vms]
    time.sleep(seconds)
    return [100.0 * (qemu_cpu(v) - c) / seconds for v, c in zip(vms, c0)]


def guest_poller_cpu(vm):
    out = rt.sh(vm, "for p in /proc/[0-9]*; do n=$(cat $p/comm 2>/dev/null); "
                "case $n in usb4vcable*) s=$(cat $p/stat); echo $s;; esac; done")
    tot = 0
    for line in out.splitlines():
        f = line.rsplit(")", 1)[1].split()
        tot += int(f[11]) + int(f[12])
    return tot / 100.0   # guest USER_HZ is 100


def dd(rig, a, b, ai, bi, mib, bs="256k"):
    count = mib * (1 << 20) // ((256 if bs == "256k" else 4) << 10)
    rt.bg(b, "rx", f"dd if=/dev/tbstream{bi} of=/dev/null bs={bs}")
    time.sleep(0.5)
    t = time.time()
    out = rt.sh(a, f"time dd if=/dev/zero of=/dev/tbstream{ai} bs={bs} count={count} 2>&1",
                timeout=1200)
    rc, rx = rt.bgwait(b, "rx", 600)
    host = time.time() - t
    real = [l.split(None, 1)[1] for l in out.splitlines() if l.startswith("real")]
    got = [l for l in rx.splitlines() if "bytes" in l or "records in" in l]
    return host, f"guest real {real[0] if real else '?'}, receiver: {' '.join(got)}"


def main():
    res = {}
    with Rig() as rig:
        base = rig.vm("idle0", "vc.noload=1", cables=[])
        rig.wait_ready()
        time.sleep(3)
        res["idle_nomodule"] = idle_cpu([base], IDLE_S)[0]
        base.kill()
        rig.vms.clear()

        a, b = rt.pair(rig)
        time.sleep(3)
        res["idle_linked"] = idle_cpu([a, b], IDLE_S)
        g0 = [guest_poller_cpu(v) for v in (a, b)]
        time.sleep(IDLE_S)
        g1 = [guest_poller_cpu(v) for v in (a, b)]
        res["poller_idle_pct"] = [100.0 * (y - x) / IDLE_S for x, y in zip(g0, g1)]

        bi = rt.setup_recv(b)
        ai = rt.setup_send(a)
        host, real = dd(rig, a, b, ai, bi, MIB)
        res["a2b"] = (MIB / host, real)
        bi2 = rt.setup_recv(a, "back")
        ai2 = rt.setup_send(b, "back")
        host, real = dd(rig, b, a, ai2, bi2, MIB)
        res["b2a"] = (MIB / host, real)
        # 4 KiB writes: per-frame overhead
        host, real = dd(rig, a, b, ai, bi, 64, bs="4k")
        res["a2b_4k"] = (64 / host, real)
        # idle again, with streams configured and closed
        time.sleep(2)
        res["idle_after"] = idle_cpu([a, b], IDLE_S)
        bad = [l for v in rig.vms for l in v.bad_dmesg()]
    print(f"idle QEMU CPU, VM without usb4vcable:    {res['idle_nomodule']:.1f}% of a host core")
    print(f"idle QEMU CPU, VMs with the link up:      "
          f"{res['idle_linked'][0]:.1f}% / {res['idle_linked'][1]:.1f}%")
    print(f"idle guest poller thread CPU:             "
          f"{res['poller_idle_pct'][0]:.2f}% / {res['poller_idle_pct'][1]:.2f}% of the vCPU")
    print(f"idle QEMU CPU after the transfers:        "
          f"{res['idle_after'][0]:.1f}% / {res['idle_after'][1]:.1f}%")
    print(f"dd a->b {MIB} MiB bs=256k: {res['a2b'][0]:.1f} MB/s (host wall), {res['a2b'][1]}")
    print(f"dd b->a {MIB} MiB bs=256k: {res['b2a'][0]:.1f} MB/s (host wall), {res['b2a'][1]}")
    print(f"dd a->b 64 MiB bs=4k:     {res['a2b_4k'][0]:.1f} MB/s (host wall), {res['a2b_4k'][1]}")
    if bad:
        print("GUEST KERNEL TROUBLE:\n" + "\n".join(bad))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
