#!/usr/bin/env bash
# run.sh: the end-to-end rescue scenarios (backup, restore, menu, safety, unplug,
# corruption, failing source) in QEMU VMs booting the real rescue initramfs.
#
#   tests/scenarios/run.sh [--only NAME[,NAME...]] [--keep] [--demo]
#
# 1. apt: qemu-system-x86, e2fsprogs, fdisk, busybox-static, musl-tools (only if missing)
# 2. scripts/fetch-kernel.sh      kernel + modules (cached)
# 3. scripts/build-kmod.sh        usb4vhost.ko, the virtual USB4 host (trixie build root, cached)
# 4. cargo build -p cable-ctl -p image  host fault tool, initramfs tool (USB4RESCUE_IMAGE)
# 5. static rescue (musl, stripped) -> $CACHE/scenarios/rescue
# 6. image build ... --extra-module usb4vhost.ko -> $CACHE/scenarios/rescue-initrd.img
#    (rebuilt only when rescue, the module or the kernel changed); the image ships the
#    kernel package's own thunderbolt_stream.ko.xz, which rescue loads on usb4vhost
# 7. busybox test initramfs (tests/vm/build-initramfs.py, + ext4, thunderbolt_stream) with
#    the same rescue as /bin/rescue: the "mounted target" check and the benchmark only
# 8. tests/scenarios/scenarios.py
#
# The last line is always "N passed, N failed"; exit status non-zero on any failure.
# Nothing is written into the repository: builds go to ${USB4RESCUE_CACHE:-/var/cache/usb4rescue},
# disk images and logs to a /tmp directory (kept, and printed, when something fails).
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(cd "$HERE/../.." && pwd)
CACHE=${USB4RESCUE_CACHE:-/var/cache/usb4rescue}
export USB4RESCUE_CACHE=$CACHE
OUT=$CACHE/scenarios
mkdir -p "$OUT"

log() { printf 'scenarios: %s\n' "$*" >&2; }
finish() { echo "$1 passed, $2 failed"; [ "$2" -eq 0 ] && [ "$1" -gt 0 ]; exit $?; }
step() { # step NAME: prints how long the previous step took
    local now; now=$(date +%s.%N)
    [ -n "${STEP_NAME:-}" ] && printf 'scenarios: %-28s %6.1fs\n' "$STEP_NAME" "$(echo "$now - $STEP_T" | bc)" >&2
    STEP_NAME=$1; STEP_T=$now
}

T0=$(date +%s)
step "packages"
pkgs=()
command -v qemu-system-x86_64 >/dev/null || pkgs+=(qemu-system-x86)
command -v mkfs.ext4 >/dev/null && command -v debugfs >/dev/null && command -v e2fsck >/dev/null || pkgs+=(e2fsprogs)
command -v sfdisk >/dev/null || pkgs+=(fdisk)
command -v musl-gcc >/dev/null || pkgs+=(musl-tools)
command -v bc >/dev/null || pkgs+=(bc)
command -v python3 >/dev/null || pkgs+=(python3)
command -v strip >/dev/null || pkgs+=(binutils)
{ [ -x /bin/busybox ] && file -L /bin/busybox 2>/dev/null | grep -q 'statically linked'; } || pkgs+=(busybox-static file)
if [ ${#pkgs[@]} -gt 0 ]; then
    log "installing ${pkgs[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${pkgs[@]}" >&2 ||
        { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${pkgs[@]}" >&2; } ||
        { log "cannot install ${pkgs[*]}"; finish 0 1; }
fi
CARGO=$(command -v cargo || echo "$HOME/.cargo/bin/cargo")
[ -x "$CARGO" ] || { log "cargo not found (install rustup)"; finish 0 1; }
if command -v rustup >/dev/null && ! rustup target list --installed | grep -q x86_64-unknown-linux-musl; then
    rustup target add x86_64-unknown-linux-musl >&2 || { log "rustup target add musl failed"; finish 0 1; }
fi
TDIR=$(cd "$TOP" && "$CARGO" metadata -q --format-version 1 --no-deps |
       python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')

step "kernel"
KDIR=$("$TOP/scripts/fetch-kernel.sh" | tail -n1) && [ -f "$KDIR/vmlinuz" ] ||
    { log "scripts/fetch-kernel.sh failed"; finish 0 1; }
KVER=$(basename "$KDIR")

step "usb4vhost.ko"
# The build root is shared too: a concurrent build-kmod.sh of someone else can make ours
# fail. Try twice, then fall back to the module cached by an earlier build (loudly).
vhost() { "$TOP/scripts/build-kmod.sh" | grep '/usb4vhost\.ko$' | tail -n1; }
KO=$(vhost)
if [ -z "$KO" ] || [ ! -f "$KO" ]; then
    sleep 5
    KO=$(vhost)
fi
if [ -z "$KO" ] || [ ! -f "$KO" ]; then
    KO=$CACHE/kmod/$KVER/usb4vhost.ko
    [ -f "$KO" ] || { log "scripts/build-kmod.sh did not produce usb4vhost.ko"; finish 0 1; }
    log "WARNING: scripts/build-kmod.sh failed twice; using the cached $KO ($(date -r "$KO" '+%F %T'))"
fi
# Our own copy: others rebuild the cached one while we run.
cp "$KO" "$OUT/usb4vhost.ko.new" && mv "$OUT/usb4vhost.ko.new" "$OUT/usb4vhost.ko" && KO=$OUT/usb4vhost.ko

step "cable-ctl, image"
(cd "$TOP" && nice "$CARGO" build -q --release -p cable-ctl -p image >&2) ||
    { log "cargo build -p cable-ctl -p image failed"; finish 0 1; }
CABLE_CTL=$TDIR/release/cable-ctl
# One image binary for image build, build-initramfs.py and scenarios.py (`image cat`).
export USB4RESCUE_IMAGE=$TDIR/release/image

step "rescue (static, musl)"
# The checkout is shared with engineers who edit rescue/ while this runs: when the
# working tree does not build, the last rescue built here is used (loudly).
if (cd "$TOP" && nice "$CARGO" build -q --release --target x86_64-unknown-linux-musl -p rescue >&2); then
    strip -o "$OUT/rescue.new" "$TDIR/x86_64-unknown-linux-musl/release/rescue" || finish 0 1
    if cmp -s "$OUT/rescue.new" "$OUT/rescue"; then rm -f "$OUT/rescue.new"; else mv "$OUT/rescue.new" "$OUT/rescue"; fi
elif [ -f "$OUT/rescue" ]; then
    log "WARNING: rescue does not build from the working tree (see above); using the rescue"
    log "WARNING: built here at $(date -r "$OUT/rescue" '+%F %T') ($OUT/rescue)"
else
    log "cargo build --target x86_64-unknown-linux-musl -p rescue failed"; finish 0 1
fi

step "initramfs (image build)"
KEY=$( { echo "compress=none"; cat "$OUT/rescue" "$KO" "$KDIR/vmlinuz" "$KDIR/lib/modules/$KVER/modules.dep" \
      $(cd "$TOP" && git ls-files -z image | xargs -0 -I{} echo "$TOP/{}"); } 2>/dev/null | sha256sum | cut -c1-16)
INITRD=$OUT/rescue-initrd-$KEY.img
if [ ! -f "$INITRD" ]; then
    # Uncompressed: unpacking xz costs every boot about a second under TCG, and about
    # twenty boots share this image (the USB image's initramfs stays xz, as shipped).
    (cd "$TOP" && nice "$USB4RESCUE_IMAGE" build --kernel-dir "$KDIR" --rescue "$OUT/rescue" \
        --extra-module "$KO" --compress none -o "$INITRD.tmp" >&2) && mv "$INITRD.tmp" "$INITRD" ||
        { log "image build failed"; finish 0 1; }
    # Others' runs may boot theirs right now: only what nobody touched for a day goes.
    find "$OUT" -name 'rescue-initrd-*.img' ! -name "$(basename "$INITRD")" -mmin +1440 -delete
fi
log "initramfs $INITRD ($(du -k "$INITRD" | cut -f1) KiB)"

step "shell initramfs"
SHELL_INITRD=$OUT/shell-initrd-$KEY.cpio
if [ ! -f "$SHELL_INITRD" ]; then
    python3 "$TOP/tests/vm/build-initramfs.py" --kernel-dir "$KDIR" --ko "$KO" \
        --module virtio_blk --module configfs --module ext4 --module thunderbolt_stream \
        --file "$OUT/rescue=bin/rescue" --out "$SHELL_INITRD.tmp" >&2 &&
        mv "$SHELL_INITRD.tmp" "$SHELL_INITRD" || { log "shell initramfs failed (the 'mounted' check will fail)"; SHELL_INITRD=; }
    find "$OUT" -name 'shell-initrd-*.cpio' ! -name "$(basename "${SHELL_INITRD:-none}")" -mmin +1440 -delete
fi
step "done building"
log "built in $(( $(date +%s) - T0 ))s"

python3 "$TOP/qemu/vmpair.py" cleanup >/dev/null 2>&1
python3 "$HERE/scenarios.py" --kernel "$KDIR/vmlinuz" --initrd "$INITRD" \
    ${SHELL_INITRD:+--shell-initrd "$SHELL_INITRD"} --cable-ctl "$CABLE_CTL" "$@"
rc=$?
log "wall time $(( $(date +%s) - T0 ))s (builds included)"
exit $rc
