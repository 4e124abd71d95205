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
    in_root "$PKGROOT" "mount --bind '$PKGROOT' '$PKGROOT'" "$@"
}

# in_pkgroot_overlay DIR 'SHELL COMMAND' [BIND_SRC:BIND_DST ...]
# The same in a throwaway copy of the packaging root: an overlay whose upper layer
# is DIR/upper (emptied first, kept afterwards to see what the command changed) and
# whose lower layer, $PKGROOT, stays as it was. Costs no copy.
in_pkgroot_overlay() {
    local dir=$1
    shift
    rm -rf --one-file-system "$dir"
    mkdir -p "$dir/upper" "$dir/work" "$dir/merged"
    in_root "$dir/merged" "mount -t overlay overlay \
        -o 'lowerdir=$PKGROOT,upperdir=$dir/upper,workdir=$dir/work' '$dir/merged'" "$@"
}

# in_root ROOT 'MOUNT ROOT' 'SHELL COMMAND' [BIND_SRC:BIND_DST ...]: for the two above.
in_root() {
    local root=$1 mount_root=$2 cmd=$3
    shift 3
    local binds="" b src dst
    for b in "$@"; do
        src=${b%%:*}
        dst=${b#*:}
        binds="$binds mkdir -p '$root$dst' && mount --bind '$src' '$root$dst' &&"
    done
    # The command travels as "$1" of the outer sh, so it may contain any quotes.
    unshare -m --propagation private sh -c "
        set -e
        $mount_root
        mkdir -p '$root/src'
        mount -t proc proc '$root/proc'
        mount --rbind /dev '$root/dev'
        mount --rbind /sys '$root/sys'
        mount -t tmpfs tmpfs '$root/tmp'
        mount --bind '$TOP' '$root/src'
        mount -o remount,bind,ro '$root/src'
        $binds true
        exec chroot '$root' /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb LANG=C.UTF-8 sh -c \"\$1\"
    " sh "$cmd"
}
