#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# Build kmod/ (usb4vhost.ko) for the current trixie-backports kernel inside
# the trixie build root made by scripts/buildroot.sh. The module is copied to
# ${USB4RESCUE_CACHE:-/var/cache/usb4rescue}/kmod/<kver>/ and its path is the
# last line on stdout (callers take `tail -n1`; the modules of a build stay in
# that one directory). Nothing is written into the source tree. A module built
# from the same sources, kernel and make arguments is reused (each VM group asks
# for it; the build is about 6 s of every group otherwise).
#
# Environment:
#   USB4RESCUE_CACHE  cache directory (default /var/cache/usb4rescue)
#   KMOD_EXTRA        extra make arguments, e.g. "W=1"
set -euo pipefail

HERE=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${USB4RESCUE_CACHE:-/var/cache/usb4rescue}
SRC=$HERE/kmod

log() { echo "build-kmod: $*" >&2; }
die() { echo "build-kmod: ERROR: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (chroot)"
[ -f "$SRC/vhost_main.c" ] || die "no $SRC/vhost_main.c"

mkdir -p "$CACHE"
# One build at a time: the build root's /proc mount is shared.
exec 9>"$CACHE/build-kmod.lock"
flock 9

ROOT=$("$HERE/scripts/buildroot.sh" | tail -n1)
[ -d "$ROOT" ] || die "build root not available"
KVER=$(cat "$ROOT/.usb4rescue-ok")
[ -d "$ROOT/lib/modules/$KVER/build" ] || die "no headers for $KVER in $ROOT"

OUT=$CACHE/kmod/$KVER
# The key covers everything the build reads from us; the headers are fixed by KVER.
KEY=$( { echo "$KVER ${KMOD_EXTRA:-}"; cd "$SRC" && sha256sum Kbuild Makefile ./*.c ./*.h; } | sha256sum | cut -d' ' -f1)
if [ -f "$OUT/usb4vhost.ko" ] && [ "$(cat "$OUT/usb4vhost.key" 2>/dev/null)" = "$KEY" ]; then
	log "reusing $OUT/usb4vhost.ko (same sources and kernel)"
	echo "$OUT/usb4vhost.ko"
	exit 0
fi

WORK=$(mktemp -d "$ROOT/usr/src/usb4vhost-build.XXXXXX")
WORK=${WORK#"$ROOT"}
MOUNTED=
cleanup() {
	if [ -n "$MOUNTED" ]; then
		umount "$ROOT/proc" 2>/dev/null || umount -l "$ROOT/proc" || true
	fi
	rm -rf --one-file-system "${ROOT:?}$WORK"
}
trap cleanup EXIT

cp -a "$SRC"/Kbuild "$SRC"/Makefile "$SRC"/*.c "$SRC"/*.h "$ROOT$WORK/"

if ! mountpoint -q "$ROOT/proc"; then
	mount -t proc proc "$ROOT/proc"
	MOUNTED=1
fi

log "building usb4vhost for $KVER"
# shellcheck disable=SC2086
if ! chroot "$ROOT" make -C "/lib/modules/$KVER/build" M="$WORK" \
	${KMOD_EXTRA:-} modules >&2; then
	die "module build failed"
fi

mkdir -p "$OUT"
rm -f "$OUT/usb4vhost.key"
install -m 0644 "$ROOT$WORK/usb4vhost.ko" "$OUT/usb4vhost.ko.tmp"
mv "$OUT/usb4vhost.ko.tmp" "$OUT/usb4vhost.ko"
echo "$KEY" > "$OUT/usb4vhost.key"
# A usb4vcable.ko of an older build would pass for a current module: remove it
rm -f "$OUT/usb4vcable.ko"
log "built $OUT/usb4vhost.ko"
echo "$OUT/usb4vhost.ko"
