#!/usr/bin/env python3
"""Issue 15, bench 5(a): rescue backup over N UNIX-socket streams, each shaped
to R bytes/s by a proxy, N = 1, 2, 4; prints the throughput against N x R.

The proxy moves bytes with splice(2) through a pipe (no copy through Python),
pacing each connection's client-to-server direction on its own; the other
direction (ACKs, NAKs) passes unshaped. The image is random (no zero chunks)
and lives in tmpfs-like page cache: what is measured is the transfer, not a
disk. Each N runs --rounds times; the median counts.
"""
import argparse, os, shutil, socket, statistics, subprocess, sys, tempfile, threading, time

def pump(src, dst, rate):
    """Copies src to dst until EOF, at most `rate` bytes/s (None: unshaped)."""
    r, w = os.pipe()
    sent, t0 = 0, time.monotonic()
    step = 256 << 10
    try:
        while True:
            if rate:
                due = sent / rate - (time.monotonic() - t0)
                if due > 0:
                    time.sleep(due)
            n = os.splice(src.fileno(), w, step)
            if n == 0:
                break
            left = n
            while left:
                left -= os.splice(r, dst.fileno(), left)
            sent += n
    except OSError:
        pass
    finally:
        os.close(r)
        os.close(w)
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

def proxy(listen_path, server_path, rate, stop):
    l = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    l.bind(listen_path)
    l.listen(16)
    l.settimeout(0.2)
    while not stop.is_set():
        try:
            c, _ = l.accept()
        except socket.timeout:
            continue
        u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        u.connect(server_path)
        threading.Thread(target=pump, args=(c, u, rate), daemon=True).start()
        threading.Thread(target=pump, args=(u, c, None), daemon=True).start()
    l.close()

def one_run(rescue, img, work, n, rate):
    store = os.path.join(work, "store")
    shutil.rmtree(store, ignore_errors=True)
    os.makedirs(store)
    sock, psock = os.path.join(work, "s.sock"), os.path.join(work, "p.sock")
    for p in (sock, psock):
        if os.path.exists(p):
            os.remove(p)
    log = open(os.path.join(work, "serve.log"), "w")
    srv = subprocess.Popen([rescue, "serve", "--store", store, "--device", f"unix:{sock}",
                            "--once", "--streams", str(n)], stderr=log,
                           stdout=subprocess.DEVNULL, env=dict(os.environ, RESCUE_PLAIN="1"))
    while not os.path.exists(sock):
        time.sleep(0.02)
    stop = threading.Event()
    px = threading.Thread(target=proxy, args=(psock, sock, rate, stop), daemon=True)
    px.start()
    while not os.path.exists(psock):
        time.sleep(0.02)
    t0 = time.monotonic()
    out = subprocess.run([rescue, "backup", "--device", f"unix:{psock}", "--streams", str(n),
                          "--all-blocks", img], capture_output=True, text=True,
                         env=dict(os.environ, RESCUE_PLAIN="1"))
    wall = time.monotonic() - t0
    stop.set()
    srv.wait(timeout=120)
    if out.returncode != 0 or f"using {n} stream(s)" not in out.stderr and n > 1:
        sys.exit(f"backup with {n} streams failed:\n{out.stderr}")
    return wall

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rescue", required=True)
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--rate", type=float, default=150e6, help="bytes/s per stream")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--streams", default="1,2,4")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="rescue-streams-", dir=os.environ.get("BENCH_DIR", "/var/tmp"))
    try:
        img = os.path.join(work, "rand.img")
        with open("/dev/urandom", "rb") as src, open(img, "wb") as f:
            for _ in range(a.mib):
                f.write(src.read(1 << 20))
        size = a.mib << 20
        print(f"{a.mib} MiB random image, each stream shaped to {a.rate / 1e6:.0f} MB/s, "
              f"{os.cpu_count()} CPU(s), median of {a.rounds}")
        for n in [int(x) for x in a.streams.split(",")]:
            walls = [one_run(a.rescue, img, work, n, a.rate) for _ in range(a.rounds)]
            wall = statistics.median(walls)
            got = size / wall
            print(f"streams={n}: {got / 1e6:7.1f} MB/s, {got / (n * a.rate):.2f} x (N x R = "
                  f"{n * a.rate / 1e6:.0f} MB/s; runs {', '.join(f'{w:.2f}' for w in walls)} s)")
    finally:
        shutil.rmtree(work, ignore_errors=True)

if __name__ == "__main__":
    main()
