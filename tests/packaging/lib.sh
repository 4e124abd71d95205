# SPDX-License-Identifier: GPL-2.0-only
# Shared by the packaging scripts (sourced by bash): cache paths and how to run a
# command inside the packaging root (a Debian trixie root with mkosi and dracut).
# shellcheck shell=bash

TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CACHE=${USB4RESCUE_CACHE:-/var/cache/usb4rescue}
export USB4RESCUE_CACHE=$CACHE
PKGROOT=$CACHE/pkgroot
PKGOUT=$CACHE/packaging

plog() { printf '%s: %s\n' "${PLOG_NAME:-packaging}" "$*" >&2; }
pdie() { printf '%s: ERROR: %s\n' "${PLOG_NAME:-packaging}" "$*" >&2; exit 1; }

# in_pkgroot 'SHELL COMMAND' [BIND_SRC:BIND_DST ...]
# Runs a sh command line chrooted into $PKGROOT, in a private mount namespace where
# the root is a mount point (mkosi's sandbox remounts /), with /proc, /dev, /sys,
# a tmpfs on /tmp, the repository on /src (read-only) and the given extra bind
# mounts (DST inside the root, created if missing). Everything is unmounted when
# the namespace ends, even when the command fails or is killed.
in_pkgroot() {
    local cmd=$1
    shift
    local binds="" b src dst
    for b in "$@"; do
        src=${b%%:*}
        dst=${b#*:}
        binds="$binds mkdir -p '$PKGROOT$dst' && mount --bind '$src' '$PKGROOT$dst' &&"
    done
    mkdir -p "$PKGROOT/src"
    # The command travels as "$1" of the outer sh, so it may contain any quotes.
    unshare -m --propagation private sh -c "
        set -e
        mount --bind '$PKGROOT' '$PKGROOT'
        mount -t proc proc '$PKGROOT/proc'
        mount --rbind /dev '$PKGROOT/dev'
        mount --rbind /sys '$PKGROOT/sys'
        mount -t tmpfs tmpfs '$PKGROOT/tmp'
        mount --bind '$TOP' '$PKGROOT/src'
        mount -o remount,bind,ro '$PKGROOT/src'
        $binds true
        exec chroot '$PKGROOT' /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb LANG=C.UTF-8 sh -c \"\$1\"
    " sh "$cmd"
}
