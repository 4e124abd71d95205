#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-only
#
# prepare.sh: the inputs the packaging builds and tests share, all cached:
# the packaging root (pkgroot.sh), the trixie-backports kernel (scripts/fetch-kernel.sh),
# usb4vhost.ko (scripts/build-kmod.sh: the virtual USB4 host under Debian's own
# thunderbolt_stream), the static rescue (musl, stripped), cable-ctl, and the peer VM's
# rescue initramfs (image/, with usb4vhost). Writes
# $CACHE/packaging/inputs.env (KVER, KDIR, PKGROOT, CABLE_CTL, PEER_INITRD) for the others.
set -euo pipefail
PLOG_NAME=prepare
# shellcheck source=tests/packaging/lib.sh
. "$(dirname "$0")/lib.sh"
[ "$(id -u)" = 0 ] || pdie "must run as root"
mkdir -p "$PKGOUT"

pkgs=()
command -v qemu-system-x86_64 > /dev/null || pkgs+=(qemu-system-x86)
[ -f /usr/share/ovmf/OVMF.fd ] || pkgs+=(ovmf)
command -v mkfs.ext4 > /dev/null && command -v debugfs > /dev/null || pkgs+=(e2fsprogs)
command -v musl-gcc > /dev/null || pkgs+=(musl-tools)
command -v strip > /dev/null || pkgs+=(binutils)
command -v make > /dev/null || pkgs+=(make)
command -v unshare > /dev/null || pkgs+=(util-linux)
if [ ${#pkgs[@]} -gt 0 ]; then
    plog "installing ${pkgs[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q "${pkgs[@]}" >&2 ||
        { apt-get -o DPkg::Lock::Timeout=600 update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q "${pkgs[@]}" >&2; } ||
        pdie "cannot install ${pkgs[*]}"
fi

PKGROOT=$("$TOP/tests/packaging/pkgroot.sh" | tail -n1)
KDIR=$("$TOP/scripts/fetch-kernel.sh" | tail -n1)
[ -f "$KDIR/vmlinuz" ] || pdie "scripts/fetch-kernel.sh failed"
KVER=$(basename "$KDIR")
[ "$(cat "$CACHE/buildroot/.usb4rescue-ok")" = "$KVER" ] ||
    pdie "the build root has kernel headers $(cat "$CACHE/buildroot/.usb4rescue-ok"), fetch-kernel.sh gave $KVER"

# The shared build root may be busy with someone else's module build: retry once, then
# fall back to the module cached by an earlier build (loudly).
vhost() { "$TOP/scripts/build-kmod.sh" | grep '/usb4vhost\.ko$' | tail -n1; }
KO=$(vhost) || KO=
[ -f "$KO" ] || { sleep 5; KO=$(vhost) || KO=; }
if [ ! -f "$KO" ]; then
    KO=$CACHE/kmod/$KVER/usb4vhost.ko
    [ -f "$KO" ] || pdie "scripts/build-kmod.sh did not produce usb4vhost.ko"
    plog "WARNING: build-kmod.sh failed; using the cached $KO"
fi
cp "$KO" "$PKGOUT/usb4vhost.ko.new" && mv "$PKGOUT/usb4vhost.ko.new" "$PKGOUT/usb4vhost.ko"

CARGO=$(command -v cargo || echo "$HOME/.cargo/bin/cargo")
[ -x "$CARGO" ] || pdie "cargo not found (install Rust >= 1.88 with rustup)"
if command -v rustup > /dev/null && ! rustup target list --installed | grep -q x86_64-unknown-linux-musl; then
    rustup target add x86_64-unknown-linux-musl >&2 || pdie "rustup target add x86_64-unknown-linux-musl failed"
fi
TDIR=$(cd "$TOP" && "$CARGO" metadata -q --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
(cd "$TOP" && nice "$CARGO" build -q --release --target x86_64-unknown-linux-musl -p rescue >&2) ||
    pdie "cargo build --release --target x86_64-unknown-linux-musl -p rescue failed"
strip -o "$PKGOUT/rescue.new" "$TDIR/x86_64-unknown-linux-musl/release/rescue"
mv "$PKGOUT/rescue.new" "$PKGOUT/rescue"
(cd "$TOP" && nice "$CARGO" build -q --release -p cable-ctl -p image >&2) || pdie "cargo build -p cable-ctl -p image failed"
CABLE_CTL=$TDIR/release/cable-ctl

PEER_INITRD=$PKGOUT/peer-initrd.img
# The peer (B) is test equipment: uncompressed boots faster under TCG.
"$TDIR/release/image" build --kernel-dir "$KDIR" --rescue "$PKGOUT/rescue" \
    --extra-module "$PKGOUT/usb4vhost.ko" --compress none -o "$PEER_INITRD.tmp" >&2 || pdie "image build (peer initramfs) failed"
mv "$PEER_INITRD.tmp" "$PEER_INITRD"

cat > "$PKGOUT/inputs.env" << EOT
KVER=$KVER
KDIR=$KDIR
PKGROOT=$PKGROOT
CABLE_CTL=$CABLE_CTL
PEER_INITRD=$PEER_INITRD
IMAGE_TOOL=$TDIR/release/image
EOT
plog "ready: kernel $KVER, rescue $(stat -c %s "$PKGOUT/rescue") bytes"
