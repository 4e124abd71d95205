#!/usr/bin/env python3
"""Benchmarks an incremental backup (issue 14): a full backup of a random image,
then 1 % of it changed in scattered 256 KiB regions, then the second backup
against the first. Prints both backups' wall time and bytes sent (as the
client's summary reports them) and checks the second image is byte-identical.
Usage: bench/run.sh incremental [--mib N] [--rescue PATH]."""
import argparse, hashlib, os, random, re, shutil, subprocess, sys, tempfile, time

REGION = 256 * 1024


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(1 << 20):
            h.update(b)
    return h.hexdigest()


def backup(rescue, sock, img):
    t = time.monotonic()
    p = subprocess.run([rescue, "backup", "-d", f"unix:{sock}", img],
                       capture_output=True, text=True, env={**os.environ, "RESCUE_PLAIN": "1"})
    secs = time.monotonic() - t
    if p.returncode != 0:
        sys.exit(f"backup failed ({p.returncode}):\n{p.stdout}{p.stderr}")
    sent = re.search(r"read, (\S+ \S+) sent", p.stdout)
    return secs, sent.group(1) if sent else "?", p.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rescue", required=True)
    ap.add_argument("--mib", type=int, default=1024)
    a = ap.parse_args()
    base = os.environ.get("BENCH_DIR", "/var/tmp/usb4rescue-bench")
    os.makedirs(base, exist_ok=True)
    work = tempfile.mkdtemp(dir=base, prefix="incr-")
    try:
        img, store, sock = f"{work}/disk.img", f"{work}/store", f"{work}/serve.sock"
        rnd = random.Random(14)
        with open(img, "wb") as f:
            for _ in range(a.mib):
                f.write(rnd.randbytes(1 << 20))
        srv = subprocess.Popen([a.rescue, "serve", "--create", "--store", store, "-d", f"unix:{sock}"],
                               stdout=subprocess.DEVNULL, stderr=open(f"{work}/serve.log", "w"))
        try:
            while not os.path.exists(sock):
                time.sleep(0.05)
            t1, sent1, _ = backup(a.rescue, sock, img)
            size = a.mib << 20
            regions = max(1, size // 100 // REGION)
            with open(img, "r+b") as f:
                for i in range(regions):
                    f.seek(rnd.randrange(0, size - REGION))
                    f.write(rnd.randbytes(REGION))
            t2, sent2, out = backup(a.rescue, sock, img)
        finally:
            srv.terminate()
            srv.wait()
        dirs = sorted(os.path.join(store, h, b) for h in os.listdir(store)
                      for b in os.listdir(os.path.join(store, h)))
        same = sha256(f"{dirs[-1]}/disk.img") == sha256(img)
        print(f"image {a.mib} MiB, {regions} regions of 256 KiB changed (1 %)")
        print(f"first backup (full):        {t1:6.1f} s, {sent1} sent")
        print(f"second backup (incremental): {t2:6.1f} s, {sent2} sent, image identical: {same}")
        print(next((l.strip() for l in out.splitlines() if "incremental against" in l), ""))
        if not same:
            sys.exit(1)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
