#!/usr/bin/env python3
"""Raw dd throughput through Debian's thunderbolt_stream.ko on usb4vhost, and the CPU an
idle link costs (host CPU of each QEMU process, the guest's poller thread), under TCG.
Run through bench/raw-dd.sh (it builds the kernel, module, cable-ctl and initramfs)."""
import os
import sys
import time
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "qemu"))
from vmpair import Rig  # noqa: E402

MIB = int(os.environ.get("BENCH_MIB", "256"))
IDLE_S = float(os.environ.get("BENCH_IDLE_S", "10"))
TICK = os.sysconf("SC_CLK_TCK")
NOLOAD = "vm.noload=usb4vhost,thunderbolt,thunderbolt_stream"


def sh(vm, script, timeout=120):
    r = vm.run(script, timeout=timeout)
    if r.rc:
        sys.exit(f"{vm.name}: `{script}` failed (rc={r.rc}):\n{r.out}")
    return r.out.strip()


def qemu_cpu(vm):
    f = Path(f"/proc/{vm.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICK


def idle_cpu(vms, seconds):
    c0 = [qemu_cpu(v) for v in vms]
    time.sleep(seconds)
    return [100.0 * (qemu_cpu(v) - c) / seconds for v, c in zip(vms, c0)]


def guest_poller_cpu(vm):
    """CPU seconds of the guest's usb4vhost/N poller threads (USER_HZ 100)."""
    out = sh(vm, "for p in /proc/[0-9]*; do case $(cat $p/comm 2>/dev/null) in "
                 "usb4vhost*) cat $p/stat;; esac; done")
    return sum(int(f[11]) + int(f[12]) for f in
               (line.rsplit(")", 1)[1].split() for line in out.splitlines())) / 100.0


def streams(rx, tx, name):
    """Receiver with automatic HopIDs, sender adopting them; -> (rx index, tx index)."""
    irx = sh(rx, f"mkstream 0-1.0 {name} -1 -1").split()[-3]
    itx = sh(tx, f"mkstream 0-1.0 {name}").split()[-3]
    return irx, itx


def dd(tx, rx, itx, irx, mib, bs="256k"):
    count = mib * (1 << 20) // ((256 if bs == "256k" else 4) << 10)
    sh(rx, f"bg rx dd if=/dev/tbstream{irx} of=/dev/null bs={bs}; waitopen /dev/tbstream{irx} 10")
    t = time.time()
    out = sh(tx, f"time dd if=/dev/zero of=/dev/tbstream{itx} bs={bs} count={count} 2>&1", 1200)
    got = sh(rx, "bgwait rx 600", 660)
    host = time.time() - t
    real = [l.split(None, 1)[1] for l in out.splitlines() if l.startswith("real")]
    got = [l for l in got.splitlines() if "bytes" in l or "records in" in l]
    return mib / host, f"guest real {real[0] if real else '?'}, receiver: {' '.join(got)}"


def main():
    kernel = os.environ["USB4RESCUE_VM_KERNEL"]
    initrd = os.environ["USB4RESCUE_VM_VHOST_INITRD"]
    res = {}
    with Rig() as rig:
        base = rig.vm("idle0").start(kernel, initrd, append=NOLOAD)
        base.wait_ready()
        time.sleep(3)
        res["idle_nomodule"] = idle_cpu([base], IDLE_S)[0]
        base.kill()

        cab = rig.cable("ab")
        a = rig.vm("alpha").start(kernel, initrd, append=NOLOAD, cables=[(cab, "a")])
        b = rig.vm("bravo").start(kernel, initrd, append=NOLOAD, cables=[(cab, "b")])
        for v, side in ((a, "a"), (b, "b")):
            v.wait_ready()
            sh(v, f"insmod /lib/modules/usb4vhost.ko side={side} && "
                  "insmod /lib/modules/thunderbolt_stream.ko")
        for v in (a, b):
            sh(v, "linkwait 60", 90)
        time.sleep(3)
        res["idle_linked"] = idle_cpu([a, b], IDLE_S)
        g0 = [guest_poller_cpu(v) for v in (a, b)]
        time.sleep(IDLE_S)
        g1 = [guest_poller_cpu(v) for v in (a, b)]
        res["poller_idle_pct"] = [100.0 * (y - x) / IDLE_S for x, y in zip(g0, g1)]

        irx, itx = streams(b, a, "ab")
        res["a2b"] = dd(a, b, itx, irx, MIB)
        irx2, itx2 = streams(a, b, "ba")
        res["b2a"] = dd(b, a, itx2, irx2, MIB)
        res["a2b_4k"] = dd(a, b, itx, irx, 64, bs="4k")     # per-frame overhead
        time.sleep(2)
        res["idle_after"] = idle_cpu([a, b], IDLE_S)
        bad = [l for v in (a, b) for l in v.kernel_problems()]
    print(f"idle QEMU CPU, VM without usb4vhost:      {res['idle_nomodule']:.1f}% of a host core")
    print(f"idle QEMU CPU, VMs with the link up:      "
          f"{res['idle_linked'][0]:.1f}% / {res['idle_linked'][1]:.1f}%")
    print(f"idle guest poller thread CPU:             "
          f"{res['poller_idle_pct'][0]:.2f}% / {res['poller_idle_pct'][1]:.2f}% of the vCPU")
    print(f"idle QEMU CPU after the transfers:        "
          f"{res['idle_after'][0]:.1f}% / {res['idle_after'][1]:.1f}%")
    for k, what in (("a2b", f"a->b {MIB} MiB bs=256k"), ("b2a", f"b->a {MIB} MiB bs=256k"),
                    ("a2b_4k", "a->b 64 MiB bs=4k    ")):
        print(f"dd {what}: {res[k][0]:.1f} MB/s (host wall), {res[k][1]}")
    if bad:
        print("GUEST KERNEL TROUBLE:\n" + "\n".join(bad))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
