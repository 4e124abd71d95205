#!/usr/bin/env python3
"""Benchmarks an incremental backup (issue 14): a full backup of a random image,
then 1 % of it changed in scattered 256 KiB regions, then the second backup
against the first. Prints both backups' wall time and the bytes the client put on
the socket (counted by a relay between client and server, like
bench/used_blocks.py), checks the second image is byte-identical, and does the same
with rsync's delta transfer (`--no-whole-file --inplace`, the comparable tool: a
destination holding the first version, brought up to date by sending only what
differs), whose own --stats say what it sent.
Usage: bench/run.sh incremental [--mib N] [--rescue PATH]."""
import argparse, hashlib, os, random, re, shutil, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from used_blocks import Relay  # noqa: E402

REGION = 256 * 1024
MiB = 1 << 20


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(1 << 20):
            h.update(b)
    return h.hexdigest()


def backup(rescue, front, img):
    """(wall seconds, client output) of one rescue backup through the relay."""
    t = time.monotonic()
    p = subprocess.run([rescue, "backup", "-d", f"unix:{front}", img],
                       capture_output=True, text=True, env={**os.environ, "RESCUE_PLAIN": "1"})
    secs = time.monotonic() - t
    if p.returncode != 0:
        sys.exit(f"backup failed ({p.returncode}):\n{p.stdout}{p.stderr}")
    return secs, p.stdout


def rsync(src, dst):
    """(wall seconds, bytes sent) of rsync's delta transfer of src onto dst."""
    t = time.monotonic()
    p = subprocess.run(["rsync", "--no-whole-file", "--inplace", "--stats", src, dst],
                       capture_output=True, text=True)
    secs = time.monotonic() - t
    if p.returncode != 0:
        sys.exit(f"rsync failed ({p.returncode}):\n{p.stdout}{p.stderr}")
    m = re.search(r"Total bytes sent: ([\d,.]+)", p.stdout)
    return secs, int(re.sub(r"[,.]", "", m.group(1))) if m else -1


def change(img, size, rnd):
    """Overwrites 1 % of img in scattered 256 KiB regions; returns how many."""
    regions = max(1, size // 100 // REGION)
    with open(img, "r+b") as f:
        for _ in range(regions):
            f.seek(rnd.randrange(0, size - REGION))
            f.write(rnd.randbytes(REGION))
    return regions


def line(what, secs, sent):
    print(f"{what:<34} {secs:7.1f} s  {sent / MiB:9.1f} MiB sent")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rescue", required=True)
    ap.add_argument("--mib", type=int, default=1024)
    a = ap.parse_args()
    base = os.environ.get("BENCH_DIR", "/var/tmp/usb4rescue-bench")
    os.makedirs(base, exist_ok=True)
    work = tempfile.mkdtemp(dir=base, prefix="incr-")
    try:
        img, store = f"{work}/disk.img", f"{work}/store"
        sock, front = f"{work}/serve.sock", f"{work}/front.sock"
        rnd = random.Random(14)
        with open(img, "wb") as f:
            for _ in range(a.mib):
                f.write(rnd.randbytes(MiB))
        size = a.mib * MiB
        srv = subprocess.Popen([a.rescue, "serve", "--create", "--store", store, "-d", f"unix:{sock}"],
                               stdout=subprocess.DEVNULL, stderr=open(f"{work}/serve.log", "w"))
        try:
            while not os.path.exists(sock):
                time.sleep(0.05)
            relay = Relay(front, sock)
            t1, _ = backup(a.rescue, front, img)
            sent1 = relay.sent
            # rsync's destination holds the first version, as the store does.
            t1r, sent1r = rsync(img, f"{work}/rsync-dst.img")
            regions = change(img, size, rnd)
            relay.sent = 0
            t2, out = backup(a.rescue, front, img)
            sent2 = relay.sent
            relay.close()
            t2r, sent2r = rsync(img, f"{work}/rsync-dst.img")
        finally:
            srv.terminate()
            srv.wait()
        dirs = sorted(os.path.join(store, h, b) for h in os.listdir(store)
                      for b in os.listdir(os.path.join(store, h)))
        same = sha256(f"{dirs[-1]}/disk.img") == sha256(img)
        same_r = sha256(f"{work}/rsync-dst.img") == sha256(img)
        print(f"image {a.mib} MiB, {regions} regions of 256 KiB changed (1 %)")
        line("rescue, first backup (full)", t1, sent1)
        line("rescue, second (incremental)", t2, sent2)
        line("rsync, first copy", t1r, sent1r)
        line("rsync, second (--no-whole-file)", t2r, sent2r)
        print(f"images identical: rescue {same}, rsync {same_r}")
        print(next((l.strip() for l in out.splitlines() if "incremental against" in l), ""))
        if not (same and same_r):
            sys.exit(1)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
