#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-only
#
# pkgroot.sh: create (or reuse) the packaging root $CACHE/pkgroot: a copy of the
# cached trixie build root of scripts/buildroot.sh (so nothing is bootstrapped
# twice and that shared root is never changed) plus Debian trixie's mkosi (25.3)
# and dracut (106), busybox-static for the test root filesystem, and man-db and
# bash-completion for the Debian package's install test (deb-checks.sh).
# Prints the root's path as the last line. About 1 minute the first time, 0 s after.
set -euo pipefail
PLOG_NAME=pkgroot
# shellcheck source=tests/packaging/lib.sh
. "$(dirname "$0")/lib.sh"

[ "$(id -u)" = 0 ] || pdie "must run as root (chroot, mounts)"
# What goes in; a change here rebuilds the root.
PACKAGES="mkosi dracut busybox-static systemd-sysv zstd binutils grub-pc-bin man-db bash-completion"
BUILDROOT=$("$TOP/scripts/buildroot.sh" | tail -n1)
KVER=$(cat "$BUILDROOT/.usb4rescue-ok")
STAMP="$KVER $PACKAGES"
if [ -f "$PKGROOT/.usb4rescue-pkgroot" ] && [ "$(cat "$PKGROOT/.usb4rescue-pkgroot")" = "$STAMP" ]; then
    plog "reusing $PKGROOT"
    echo "$PKGROOT"
    exit 0
fi
plog "creating $PKGROOT from $BUILDROOT (+ $PACKAGES)"
TMP=$CACHE/pkgroot.tmp
rm -rf --one-file-system "$TMP"
trap 'rm -rf --one-file-system "$TMP"' EXIT
# Under build-kmod.sh's lock, and not across mounts: a kmod build in the other
# test lane mounts /proc in the build root, and copying that (kcore and all)
# filled the disk of a fresh machine.
(
    flock 9
    cp -ax --reflink=auto "$BUILDROOT" "$TMP"
) 9> "$CACHE/build-kmod.lock"
cp /etc/resolv.conf "$TMP/etc/resolv.conf" 2> /dev/null || true
chroot "$TMP" apt-get update -q >&2 || pdie "apt-get update in the packaging root failed (network?)"
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive chroot "$TMP" apt-get install -y -q --no-install-recommends $PACKAGES >&2 ||
    pdie "apt-get install $PACKAGES in the packaging root failed"
chroot "$TMP" apt-get clean
echo "$STAMP" > "$TMP/.usb4rescue-pkgroot"
rm -rf --one-file-system "$PKGROOT"
mv "$TMP" "$PKGROOT"
trap - EXIT
plog "ready: $PKGROOT"
echo "$PKGROOT"
