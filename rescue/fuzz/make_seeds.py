#!/usr/bin/env python3
"""Writes seeds/session: whole valid sessions in the session fuzz target's input
format (fuzz_targets/session.rs): one byte choosing the peer, then records
`kind u8, flags u8, disk u8, offset u32 LE, len u16 LE, payload`. The stored
backup they restore is the target's seed, `fuzz/20260101-000000-seed` (disk sda,
8192 bytes of 0x5a, chunk size 64 KiB).

Also writes seeds/fsmap_*: small real images made with mkfs.ext2/ext4, mkfs.vfat,
mkswap and cryptsetup (skipped, saying so, where a tool is missing), in the input format
of every filesystem target, fsmap::sparse's: `len u64 LE`, then records `offset u64 LE,
n u32 LE, n bytes`; the rest of the image reads as zeros (runs of 16 or more zero bytes
are left out, as Sparse::capture does).

With --fs it also writes the filesystem parsers' seeds (seeds/xfs, ...): fsmap's tests
build real images with mkfs (root and the tools needed) and, with FSMAP_SEEDS set,
store what the parser read from each, zeros left out (a few KiB each)."""
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

HELLO, ERROR, BEGIN, READY, CHUNK, ACK, NAK, DISK_END, DISK_DONE = 1, 2, 3, 4, 5, 6, 7, 8, 9
SESSION_END, LIST, RESTORE_BEGIN, PING, BYE, DIGESTS_REQ = 10, 12, 14, 16, 17, 18
SEED = "20260101-000000-seed"
BACKUP, RESTORE, OWN, ALL = 0, 1, 2, 4


def rec(kind, payload=b"", disk=0, offset=0, flags=0):
    if isinstance(payload, (dict, list)):
        payload = json.dumps(payload).encode()
    return struct.pack("<BBBIH", kind, flags, disk, offset, len(payload)) + payload


def chunk(data, bad=(), zero=False, length=None):
    length = len(data) if length is None else length
    digest = b"\0" * 32 if zero else hashlib.sha256(data).digest()
    body = digest + struct.pack("<II", length, len(bad))
    for o, n in bad:
        body += struct.pack("<II", o, n)
    return body + (b"" if zero else data)


def free_chunk(data, free, length):
    """A FLAG_FREE chunk body: `data` is the chunk as stored (zeros in `free`)."""
    body = hashlib.sha256(data).digest() + struct.pack("<III", length, 0, len(free))
    for o, n in free:
        body += struct.pack("<II", o, n)
    at = 0
    for o, n in free:
        body += data[at:o]
        at = o + n
    return body + data[at:]


def begin(size=8192, fresh=True, label="seed", key=None, disks=None):
    b = {"label": label, "chunk_size": 65536, "fresh": fresh,
         "disks": disks or [{"name": "sda", "source_path": "/dev/sda", "size": size,
                             "logical_sector_size": 512}]}
    if key:
        b["resume_key"] = key
    return b


def end(disk=0, n=8192, bad=0):
    return {"disk": disk, "bytes_read": n, "unreadable_bytes": bad}


data = bytes([0x5A]) * 8192
seeds = {
    "backup": bytes([OWN]) + rec(BEGIN, begin()) + rec(CHUNK, chunk(data))
    + rec(DISK_END, end()) + rec(SESSION_END, {"ok": True}) + rec(BYE),
    "backup-zero-and-bad": bytes([OWN]) + rec(BEGIN, begin(size=8192))
    + rec(CHUNK, chunk(b"", zero=True, length=8192), flags=1)
    + rec(DISK_END, end()) + rec(SESSION_END, {"ok": True}),
    "backup-unreadable": bytes([BACKUP]) + rec(BEGIN, begin(label=None))
    + rec(CHUNK, chunk(bytes(4096) + data[:4096], bad=[(0, 4096)]))
    + rec(DISK_END, end(bad=4096)) + rec(SESSION_END, {"ok": True}),
    "backup-two-disks-cut": bytes([OWN]) + rec(BEGIN, begin(disks=[
        {"name": "sda", "source_path": "/dev/sda", "size": 8192, "logical_sector_size": 512},
        {"name": "nvme0n1", "source_path": "/dev/nvme0n1", "size": 4096, "logical_sector_size": 4096}]))
    + rec(CHUNK, chunk(data)) + rec(PING, offset=7),
    "backup-used-blocks": bytes([OWN]) + rec(BEGIN, begin(disks=[
        {"name": "sda", "source_path": "/dev/sda", "size": 8192, "logical_sector_size": 512,
         "free": {"ranges": [[4096, 8192]], "parts": [
             {"name": "sda1", "start": 0, "end": 8192, "fs": "ext4", "label": "root",
              "used": 4096, "why": ""}]}}]))
    + rec(CHUNK, free_chunk(data[:4096] + bytes(4096), [(4096, 4096)], 8192), flags=4)
    + rec(DISK_END, end()) + rec(SESSION_END, {"ok": True}) + rec(BYE),
    "resume-without-key": bytes([OWN]) + rec(BEGIN, begin(fresh=False, key="00" * 16))
    + rec(SESSION_END, {"ok": False}),
    "list": bytes([OWN | RESTORE]) + rec(LIST, {"host": None}) + rec(LIST, {"host": "fuzz", "start": 1})
    + rec(SESSION_END, {"ok": True}) + rec(BYE),
    "list-stranger": bytes([RESTORE]) + rec(LIST, {"host": "fuzz"}) + rec(LIST, {"host": None}),
    "digests": bytes([OWN | RESTORE]) + rec(DIGESTS_REQ, {"host": "fuzz", "backup_id": SEED,
                                                          "disk": "sda", "first": 0, "count": 4}),
    "restore": bytes([OWN | RESTORE]) + rec(LIST, {"host": None})
    + rec(RESTORE_BEGIN, {"host": "fuzz", "backup_id": SEED, "disks": ["sda"]})
    + rec(ACK, offset=8192) + rec(DISK_DONE, {"disk": 0, "ok": True, "sha256": "", "message": ""})
    + rec(SESSION_END, {"ok": True}) + rec(BYE),
    "restore-resume-consent": bytes([RESTORE | ALL])
    + rec(RESTORE_BEGIN, {"host": "fuzz", "backup_id": SEED, "disks": ["sda"], "have": [[[0, 1]]]})
    + rec(DISK_DONE, {"disk": 0, "ok": True, "sha256": "", "message": ""}),
    "restore-nak": bytes([OWN | RESTORE])
    + rec(RESTORE_BEGIN, {"host": "fuzz", "backup_id": SEED, "disks": ["sda"]})
    + rec(NAK, offset=0) + rec(0xFF, b"U4RS garbage") + rec(ACK, offset=8192),
    "error": bytes([OWN]) + rec(ERROR, {"code": "refused", "message": "bye\nnow"}),
}

here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds", "session")
os.makedirs(here, exist_ok=True)
for name, blob in seeds.items():
    with open(os.path.join(here, name), "wb") as f:
        f.write(blob)
print(f"{len(seeds)} seeds in {here}")


def sparse(length, blob):
    """fsmap::sparse's encoding of a `length`-byte image that starts with `blob`."""
    out = struct.pack("<Q", length)
    at = 0
    while True:
        while at < len(blob) and blob[at] == 0:
            at += 1
        if at == len(blob):
            return out
        end, zeros = at, 0
        while end < len(blob) and zeros < 16:
            zeros = zeros + 1 if blob[end] == 0 else 0
            end += 1
        end -= zeros
        out += struct.pack("<QI", at, end - at) + blob[at:end]
        at = end


def image(cmd, kib, keep=65536):
    """The first `keep` bytes of a `kib` KiB image `cmd` (a list, the path last) made."""
    if shutil.which(cmd[0]) is None and not os.path.exists("/usr/sbin/" + cmd[0]):
        print(f"skipping a seed: {cmd[0]} is not installed")
        return None
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "img")
        with open(path, "wb") as f:
            f.truncate(kib << 10)
        env = dict(os.environ, PATH="/usr/sbin:/sbin:" + os.environ.get("PATH", ""))
        subprocess.run(cmd + [path], check=True, env=env, capture_output=True)
        with open(path, "rb") as f:
            return f.read(keep)


key = tempfile.NamedTemporaryFile(delete=False)
key.write(b"seed")
key.close()
fs_seeds = {
    # (command, image size in KiB): the first 64 KiB of each image (all of the small ones).
    "fsmap_ext4": {
        "ext2-1k": (["mkfs.ext2", "-q", "-F", "-b", "1024", "-N", "16", "-O", "^resize_inode"], 64),
        "ext4-csum": (["mkfs.ext4", "-q", "-F", "-b", "1024", "-N", "16",
                       "-O", "^has_journal,^resize_inode"], 64),
        "ext4-64bit-gdt-csum": (["mkfs.ext4", "-q", "-F", "-b", "1024", "-N", "16",
                                 "-O", "^has_journal,^resize_inode,^metadata_csum,uninit_bg,64bit"], 64),
    },
    "fsmap_fat": {
        "fat12": (["mkfs.vfat", "-F", "12"], 64),
        # A 16 MiB FAT16: its FATs and root directory are in the first 64 KiB.
        "fat16-head": (["mkfs.vfat", "-F", "16"], 16 << 10),
    },
    "fsmap_swap": {"swap": (["mkswap"], 64)},
    "fsmap_opaque": {
        # Both LUKS2 headers and the start of the key slots (random, so kept short).
        "luks2-head": (["cryptsetup", "luksFormat", "-q", "--type", "luks2", "--pbkdf", "pbkdf2",
                        "--pbkdf-force-iterations", "1000", "--key-file", key.name], 32 << 10),
        "ext4": (["mkfs.ext4", "-q", "-F", "-b", "1024", "-N", "16", "-O", "^has_journal"], 64),
    },
}
for target, images in fs_seeds.items():
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds", target)
    os.makedirs(here, exist_ok=True)
    for name, (cmd, kib) in images.items():
        blob = image(cmd, kib)
        if blob is not None:
            with open(os.path.join(here, name), "wb") as f:
                f.write(sparse(kib << 10, blob))
    print(f"{len(os.listdir(here))} seeds in {here}")
os.unlink(key.name)

FS_TESTS = ["xfs", "btrfs", "ntfs"]
if "--fs" in sys.argv:
    fs_seeds = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds")
    args = ["cargo", "test", "-p", "fsmap"]
    for t in FS_TESTS:
        args += ["--test", t]
    subprocess.run(args + ["--", "--nocapture"], check=True,
                   env=dict(os.environ, FSMAP_SEEDS=fs_seeds))
