#!/usr/bin/env python3
"""Used-block backups (issue 13) on a realistic disk, against partclone.

Builds a 2 GiB GPT image once (in $BENCH_DIR): a vfat ESP, an ext4 root holding
a Debian tree (a copy of this host's /usr/share, about 400 MiB) and the remains
of a 300 MiB file written and then deleted, and xfs and btrfs data partitions
with files. Then, with a warm page cache each time, it backs the image up with
`rescue backup` in used-block mode and with --all-blocks, and copies each
partition with `partclone.<fs> -c -s`, and prints bytes read, bytes sent and
wall time, and the ratios. Bytes read are the processes' own (rchar of
/proc/PID/io, sampled until they exit): what they asked the kernel for, not what
the disk delivered. rescue's bytes sent are counted by a relay between client and
server (rescue writes with send(2), which /proc/PID/io does not count); partclone's
are what it wrote (wchar).
"""
import argparse, os, shutil, socket, subprocess, sys, tempfile, threading, time

MIB = 1 << 20
# (name, filesystem, size MiB, mkfs command)
PARTS = [
    ("esp", "vfat", 128, ["mkfs.vfat", "-n", "ESP"]),
    ("root", "ext4", 1024, ["mkfs.ext4", "-q", "-F", "-L", "root"]),
    ("data", "xfs", 400, ["mkfs.xfs", "-q", "-f", "-L", "data"]),
    ("more", "btrfs", 480, ["mkfs.btrfs", "-q", "-f", "-L", "more"]),
]


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def offsets():
    """(start, size) in bytes of each partition: 1 MiB aligned, one after another."""
    out, at = [], MIB
    for _, _, mib, _ in PARTS:
        out.append((at, mib * MIB))
        at += mib * MIB
    return out


class Loop:
    """A loop device over bytes [start, start + size) of an image."""

    def __init__(self, img, start, size):
        self.dev = run(["losetup", "-f", "--show", "-o", str(start), "--sizelimit", str(size), img],
                       capture_output=True, text=True).stdout.strip()

    def __enter__(self):
        return self.dev

    def __exit__(self, *a):
        subprocess.run(["losetup", "-d", self.dev])


def fill(path, mib, seed):
    """`mib` MiB of incompressible bytes (seeded, so the image is the same each build)."""
    import random
    r = random.Random(seed)
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(r.randbytes(MIB))


def debian_tree(dst, limit_mib=400):
    """Copies /usr/share subdirectories until about `limit_mib` MiB."""
    total = 0
    for sub in sorted(os.listdir("/usr/share")):
        src = os.path.join("/usr/share", sub)
        du = int(subprocess.run(["du", "-sm", src], capture_output=True, text=True).stdout.split()[0])
        if total + du > limit_mib:
            continue
        run(["cp", "-a", src, dst])
        total += du
    return total


def mounted(dev, d, body):
    os.makedirs(d, exist_ok=True)
    run(["mount", dev, d])
    try:
        body(d)
        run(["sync"])
    finally:
        run(["umount", d])


def build(d):
    img = os.path.join(d, "realistic-2G.img")
    if os.path.exists(img):
        return img
    tmp = img + ".tmp"
    with open(tmp, "wb") as f:
        f.truncate(2048 * MIB)
    # sfdisk with a script: the places are exactly offsets() (sgdisk -q -n wrote no table).
    esp, linux = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
    script = "label: gpt\n" + "".join(
        f"start={start // 512}, size={size // 512}, type={esp if fs == 'vfat' else linux}, name={name}\n"
        for (name, fs, _, _), (start, size) in zip(PARTS, offsets()))
    run(["sfdisk", "-q", tmp], input=script.encode(), stdout=subprocess.DEVNULL)
    listed = subprocess.run(["sfdisk", "-J", tmp], capture_output=True, text=True, check=True).stdout
    if listed.count('"node"') != len(PARTS):
        raise SystemExit(f"bench: the partition table of {tmp} is not what was asked for:\n{listed}")
    work = tempfile.mkdtemp(dir=d)
    for (name, fs, mib, mkfs), (start, size) in zip(PARTS, offsets()):
        with Loop(tmp, start, size) as dev:
            run(mkfs + [dev], stdout=subprocess.DEVNULL)
            if fs == "vfat":
                # mtools: the kernel may have no vfat.
                f = os.path.join(work, "BOOTX64.EFI")
                fill(f, 20, 1)
                run(["mmd", "-i", dev, "::/EFI", "::/EFI/BOOT"])
                run(["mcopy", "-i", dev, f, "::/EFI/BOOT/"])
            elif fs == "ext4":
                def root(m):
                    print(f"# ext4: {debian_tree(m)} MiB of /usr/share copied", flush=True)
                    junk = os.path.join(m, "deleted")
                    fill(junk, 300, 2)
                    run(["sync"])
                    os.remove(junk)
                mounted(dev, os.path.join(work, "m"), root)
            else:
                def data(m, seed=len(fs)):
                    for k in range(15):
                        fill(os.path.join(m, f"file{k}"), 10, seed * 100 + k)
                mounted(dev, os.path.join(work, "m"), data)
    shutil.rmtree(work, ignore_errors=True)
    os.rename(tmp, img)
    return img


def warm(path):
    run(["sync"])
    with open(path, "rb") as f:
        while f.read(8 * MIB):
            pass


def measured(cmd, **kw):
    """Runs cmd; returns (wall seconds, bytes read, bytes written) of the process."""
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
    rchar = wchar = 0
    while p.poll() is None:
        try:
            io = dict(l.split(": ") for l in open(f"/proc/{p.pid}/io").read().splitlines())
            rchar, wchar = int(io["rchar"]), int(io["wchar"])
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.005)
    wall = time.monotonic() - t0
    if p.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed with exit code {p.returncode}")
    return wall, rchar, wchar


class Relay:
    """Listens on `front`, relays every connection to the UNIX socket `back` and counts
    the bytes the client sends (what would cross the cable)."""

    def __init__(self, front, back):
        self.back, self.sent = back, 0
        self.ls = socket.socket(socket.AF_UNIX)
        self.ls.bind(front)
        self.ls.listen(4)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.ls.accept()
            except OSError:
                return
            s = socket.socket(socket.AF_UNIX)
            s.connect(self.back)
            threading.Thread(target=self._pump, args=(s, c, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(c, s, True), daemon=True).start()

    def _pump(self, a, b, count):
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        try:
            while (n := a.recv_into(buf)) > 0:
                b.sendall(view[:n])
                if count:
                    self.sent += n
            b.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self):
        self.ls.close()


def rescue_backup(rescue, img, work, extra):
    """(wall, bytes read, bytes sent) of one rescue backup of img to a fresh store."""
    store = os.path.join(work, "store")
    shutil.rmtree(store, ignore_errors=True)
    sock, front = os.path.join(work, "s.sock"), os.path.join(work, "front.sock")
    for p in (sock, front):
        if os.path.exists(p):
            os.remove(p)
    serve = subprocess.Popen([rescue, "serve", "--store", store, "--create", "--device",
                              "unix:" + sock, "--once"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not os.path.exists(sock):
        time.sleep(0.01)
    relay = Relay(front, sock)
    warm(img)
    wall, read, _ = measured([rescue, "backup", "--device", "unix:" + front] + extra + [img],
                             env=dict(os.environ, RESCUE_PLAIN="1"))
    serve.wait(timeout=300)
    relay.close()
    shutil.rmtree(store, ignore_errors=True)
    return wall, read, relay.sent


def partclone(img, work):
    """partclone.<fs> -c -s of each partition into a file: (wall, read, written) summed."""
    tot = [0.0, 0, 0]
    for (name, fs, _, _), (start, size) in zip(PARTS, offsets()):
        tool = {"vfat": "partclone.fat"}.get(fs, f"partclone.{fs}")
        out = os.path.join(work, f"{name}.pc")
        with Loop(img, start, size) as dev:
            warm(img)
            w, r, wr = measured([tool, "-c", "-s", dev, "-o", out, "-q"])
        os.remove(out)
        print(f"  partclone {name:<5} {fs:<6} {w:6.2f}s read {r / MIB:7.1f} MiB", flush=True)
        tot = [tot[0] + w, tot[1] + r, tot[2] + wr]
    return tuple(tot)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rescue", required=True)
    ap.add_argument("--rounds", type=int, default=1)
    a = ap.parse_args()
    rescue = os.path.abspath(a.rescue)
    d = os.environ.get("BENCH_DIR", "/var/tmp/usb4rescue-bench")
    os.makedirs(d, exist_ok=True)
    img = build(d)
    work = tempfile.mkdtemp(dir=d)
    print(f"# used blocks: {img} (2 GiB: vfat ESP, ext4 root, xfs, btrfs); "
          f"load {open('/proc/loadavg').read().split()[0]}")
    best = {}
    for _ in range(a.rounds):
        for key, f in (("used", lambda: rescue_backup(rescue, img, work, [])),
                       ("all", lambda: rescue_backup(rescue, img, work, ["--all-blocks"])),
                       ("partclone", lambda: partclone(img, work))):
            r = f()
            best[key] = min(best.get(key, r), r)
    print(f"{'':<22} {'wall s':>7} {'read MiB':>9} {'sent MiB':>9}")
    for key, label in (("used", "rescue (used blocks)"), ("all", "rescue --all-blocks"),
                       ("partclone", "partclone, 4 parts")):
        w, r, s = best[key]
        print(f"{label:<22} {w:7.2f} {r / MIB:9.1f} {s / MIB:9.1f}")
    (uw, ur, us), (aw, ar, as_), (pw, pr, _) = best["used"], best["all"], best["partclone"]
    print(f"used / all-blocks: read {ur / ar:.2f}x, sent {us / as_:.2f}x, time {uw / aw:.2f}x")
    print(f"used / partclone:  read {ur / pr:.2f}x, time {uw / pw:.2f}x "
          f"(goal: read <= 1.00x, time < 1.00x)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
