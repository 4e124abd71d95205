#!/usr/bin/env python3
"""Times rescue backup over a UNIX socket against dd|dd and bmaptool copy.

Each tool copies the same image into the same directory; every copy ends with
data synced to disk (rescue syncs, bmaptool syncs, dd gets conv=fsync), and
the source is read once before each run so all start from a warm page cache.
The tools take turns for --rounds rounds and the medians are compared: a
virtual disk's write speed swings by 2-3x within minutes, and one round each
would mostly measure that.
"""
import argparse, hashlib, os, shutil, statistics, subprocess, sys, tempfile, time

def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)

def make_images(d, mib, sparse_only=False):
    rand = os.path.join(d, f"rand-{mib}M.img")
    sparse = os.path.join(d, f"sparse90-{mib}M.img")
    if not sparse_only and not os.path.exists(rand):
        with open("/dev/urandom", "rb") as src, open(rand + ".tmp", "wb") as f:
            for _ in range(mib):
                f.write(src.read(1 << 20))
        os.rename(rand + ".tmp", rand)
    if not os.path.exists(sparse):
        with open("/dev/urandom", "rb") as src, open(sparse + ".tmp", "wb") as f:
            f.truncate(mib << 20)
            for i in range(0, mib, 10):  # 1 MiB of data every 10 MiB: 90 % zeros
                f.seek(i << 20)
                f.write(src.read(1 << 20))
        os.rename(sparse + ".tmp", sparse)
    return rand, sparse

def warm(path):
    run(["sync"])
    with open(path, "rb") as f:
        while f.read(8 << 20):
            pass

def gnu_time(cmd, out, **kw):
    """Runs cmd under /usr/bin/time; returns (wall seconds, peak RSS KiB)."""
    t0 = time.monotonic()
    run(["/usr/bin/time", "-f", TIME_FMT, "-o", out] + cmd, **kw)
    wall = time.monotonic() - t0
    return wall, time_file(out)[0]

# GNU time's report: peak RSS (KiB), then user and system CPU seconds.
TIME_FMT = "%M %U %S"

def time_file(path):
    """(peak RSS KiB, CPU seconds) from a TIME_FMT report (its last line)."""
    rss, user, system = open(path).read().split("\n")[-2].split()
    return int(rss), float(user) + float(system)

def rescue_backup(rescue, img, work):
    """One backup of img over a UNIX socket: (client wall s, client RSS KiB, serve RSS KiB,
    store dir, s until the store is complete, (client CPU s, serve CPU s))."""
    store = os.path.join(work, "store")
    shutil.rmtree(store, ignore_errors=True)
    sock = os.path.join(work, "s.sock")
    srss = os.path.join(work, "serve.rss")
    serve = subprocess.Popen(["/usr/bin/time", "-f", TIME_FMT, "-o", srss, rescue, "serve",
                              "--store", store, "--create", "--device", "unix:" + sock, "--once"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not os.path.exists(sock):
        time.sleep(0.01)
    warm(img)
    t0 = time.monotonic()
    crep = os.path.join(work, "backup.rss")
    wall, crss = gnu_time([rescue, "backup", "--device", "unix:" + sock, img], crep,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          env=dict(os.environ, RESCUE_PLAIN="1"))
    # serve --once exits once the backup is complete (image SHA-256 recorded),
    # which may be after the client was released.
    serve.wait(timeout=120)
    complete = time.monotonic() - t0
    srss_kib, scpu = time_file(srss)
    return wall, crss, srss_kib, store, complete, (time_file(crep)[1], scpu)

def dd_pipe(img, work):
    out = os.path.join(work, "dd.out")
    warm(img)
    t0 = time.monotonic()
    run(["sh", "-c", f"dd if='{img}' bs=1M status=none | dd of='{out}' bs=1M conv=fsync status=none"])
    wall = time.monotonic() - t0
    os.remove(out)
    return wall

def bmap_copy(img, work):
    bmap = img + ".bmap"
    if not os.path.exists(bmap):
        run(["bmaptool", "create", "-o", bmap, img], stderr=subprocess.DEVNULL)
    out = os.path.join(work, "bmap.out")
    if os.path.exists(out):
        os.remove(out)
    warm(img)
    t0 = time.monotonic()
    run(["bmaptool", "copy", "--bmap", bmap, img, out], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.monotonic() - t0
    os.remove(out)
    return wall

def sha256_pass(img):
    """Seconds for one SHA-256 over the whole image, from the page cache
    (Python's hashlib is OpenSSL, SHA-NI): a floor for any tool that must
    produce the image's SHA-256, as rescue must for SHA256SUMS."""
    warm(img)
    h = hashlib.sha256()
    t0 = time.monotonic()
    with open(img, "rb", buffering=0) as f:
        while b := f.read(8 << 20):
            h.update(b)
    return time.monotonic() - t0


def hash_rate(rescue, store):
    """rescue verify re-reads and hashes the stored image: its rate shows
    whether SHA-256 runs on the CPU's SHA extensions (> 1 GB/s) or not."""
    t0 = time.monotonic()
    run([rescue, "verify", store], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=dict(os.environ, RESCUE_PLAIN="1"))
    return time.monotonic() - t0

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rescue", required=True)
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--big", action="store_true", help="also check peak RSS on a 4 GiB image")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per tool; medians are compared")
    a = ap.parse_args()
    rescue = os.path.abspath(a.rescue)
    d = os.environ.get("BENCH_DIR", "/var/tmp/usb4rescue-bench")
    os.makedirs(d, exist_ok=True)
    rand, sparse = make_images(d, a.mib)
    work = tempfile.mkdtemp(dir=d)
    shani = "sha_ni" in open("/proc/cpuinfo").read()
    print(f"# bench: {a.mib} MiB images in {d}; CPU SHA extensions: {'yes' if shani else 'no'}; "
          f"load {open('/proc/loadavg').read().split()[0]}")
    print(f"{'image':<12} {'rescue s':>9} {'dd|dd s':>8} {'bmap s':>7} {'r/dd':>6} {'r/bmap':>7} {'RSS send':>9} {'RSS recv':>9}")
    ok = True
    for name, img, target in (("random", rand, ("bmap", 1.0)), ("90%-zeros", sparse, ("dd", 0.5))):
        rs, dds, bms, cs, cpus, floors, crss, srss = [], [], [], [], [], [], 0, 0
        for _ in range(a.rounds):
            if name != "random":
                # The floor takes its turn with the tools: a single sample
                # after the rounds met another disk and CPU than their medians.
                floors.append(sha256_pass(img))
            r, c, sv, store, complete, cpu = rescue_backup(rescue, img, work)
            rs.append(r)
            cs.append(complete)
            cpus.append(cpu)
            crss, srss = max(crss, c), max(srss, sv)
            dds.append(dd_pipe(img, work))
            bms.append(bmap_copy(img, work))
        r, dd, bm = (statistics.median(x) for x in (rs, dds, bms))
        print(f"{name:<12} {r:9.2f} {dd:8.2f} {bm:7.2f} {r/dd:6.2f} {r/bm:7.2f} {crss/1024:7.1f}Mi {srss/1024:7.1f}Mi")
        if a.rounds > 1:
            rng = lambda xs: f"{min(xs):.2f}-{max(xs):.2f}"
            print(f"  (medians of {a.rounds} rounds; ranges: rescue {rng(rs)}, dd|dd {rng(dds)}, bmaptool {rng(bms)})")
        ratio = r / (bm if target[0] == "bmap" else dd)
        met = ratio <= target[1] and crss <= 65536 and srss <= 65536
        ok &= met
        print(f"  target: rescue <= {target[1]}x {target[0]}, RSS <= 64 MiB: {'met' if met else 'NOT met'}")
        ccpu, scpu = (statistics.median(x) for x in zip(*cpus))
        cores = os.cpu_count() or 1
        print(f"  CPU: client {ccpu:.2f}s, serve {scpu:.2f}s (image SHA-256 included) on {cores} cores: "
              f"both processes at once need >= {(ccpu + scpu) / cores:.2f}s of wall time")
        if name == "random":
            v = hash_rate(rescue, store)
            print(f"  rescue verify (read + SHA-256 of the stored image): {a.mib / 1024 / v:.2f} GiB/s")
        else:
            floor = statistics.median(floors)
            done = statistics.median(cs)
            print(f"  floor: one SHA-256 pass over the image takes {floor:.2f}s here (median; SHA256SUMS needs it, "
                  f"zeros included), so rescue <= 0.5x needs dd|dd >= {2 * floor:.2f}s")
            met = r / bm <= 1.0 and done / floor <= 1.1
            ok &= met
            print(f"  client exits (source released) {r:.2f}s = {r / bm:.2f}x bmaptool (target <= 1.0x); "
                  f"store complete {done:.2f}s = {done / floor:.2f}x one SHA-256 pass (target <= 1.1x): "
                  f"{'met' if met else 'NOT met'}")
        shutil.rmtree(store, ignore_errors=True)
    if a.big:
        _, big = make_images(d, 4096, sparse_only=True)
        r, crss, srss, store, _, _ = rescue_backup(rescue, big, work)
        print(f"4 GiB 90%-zeros: rescue {r:.2f}s, RSS send {crss/1024:.1f} MiB, recv {srss/1024:.1f} MiB")
        ok &= crss <= 65536 and srss <= 65536
        shutil.rmtree(store, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    print("all targets met" if ok else "some targets NOT met (see above)")

if __name__ == "__main__":
    sys.exit(main())
