#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# Create (or reuse) a Debian trixie build root with trixie-backports kernel
# headers, in which out-of-tree modules for the current trixie-backports
# kernel can be built. Prints the path of the build root on stdout (last line).
#
# The kernel version is resolved from the archive metadata at run time: the
# linux-headers-amd64 metapackage of trixie-backports depends on the
# versioned linux-headers-<ver>-amd64. Nothing about the host's apt
# configuration is changed (private sources list and state directory).
#
# Environment:
#   USB4RESCUE_CACHE  cache directory (default /var/cache/usb4rescue)
#   MIRROR            Debian mirror (default http://deb.debian.org/debian)
#   KVER              force a kernel ABI version (e.g. 7.3.4+deb13-amd64)
set -euo pipefail

CACHE=${USB4RESCUE_CACHE:-/var/cache/usb4rescue}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
ROOT=$CACHE/buildroot
APTDIR=$CACHE/apt-buildroot

log() { echo "buildroot: $*" >&2; }
die() { echo "buildroot: ERROR: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (mmdebstrap and chroot need it)"

ensure_host_tools() {
	local missing=()
	command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
	command -v apt-get >/dev/null || die "apt-get not found: not a Debian host?"
	[ -e /usr/share/keyrings/debian-archive-keyring.gpg ] ||
		missing+=(debian-archive-keyring)
	if [ ${#missing[@]} -gt 0 ]; then
		log "installing host packages: ${missing[*]}"
		if ! apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends "${missing[@]}" >&2; then
			apt-get update >&2 || die "apt-get update failed"
			apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends "${missing[@]}" >&2 ||
				die "could not install ${missing[*]} with apt-get"
		fi
	fi
}

# Private apt configuration: only reads the archive metadata.
apt_with_private_config() {
	local tool=$1
	shift
	"$tool" \
		-o Dir::Etc::SourceList="$APTDIR/sources.list" \
		-o Dir::Etc::SourceParts=/dev/null \
		-o Dir::Etc::Preferences=/dev/null \
		-o Dir::Etc::PreferencesParts=/dev/null \
		-o Dir::State::Lists="$APTDIR/lists" \
		-o Dir::State::Status="$APTDIR/status" \
		-o Dir::Cache="$APTDIR/cache" \
		-o APT::Architecture=amd64 \
		"$@"
}
apt_private() { apt_with_private_config apt-get -q "$@"; }
apt_cache_private() { apt_with_private_config apt-cache "$@"; }

resolve_kver() {
	if [ -n "${KVER:-}" ]; then
		echo "$KVER"
		return
	fi
	mkdir -p "$APTDIR/lists/partial" "$APTDIR/cache/archives/partial"
	touch "$APTDIR/status"
	echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR trixie-backports main" \
		>"$APTDIR/sources.list"
	# Refresh the metadata at most every 6 hours.
	if [ -z "$(find "$APTDIR/lists" -maxdepth 1 -name '*Packages*' -mmin -360 2>/dev/null)" ]; then
		if ! apt_private update >&2; then
			if [ -s "$ROOT/.usb4rescue-ok" ]; then
				log "WARNING: apt-get update of trixie-backports failed; using the cached build root's kernel $(cat "$ROOT/.usb4rescue-ok")"
				cat "$ROOT/.usb4rescue-ok"
				return
			fi
			die "apt-get update of trixie-backports metadata failed (network? mirror $MIRROR)"
		fi
	fi
	local dep
	dep=$(apt_cache_private show linux-headers-amd64 2>/dev/null |
		sed -n 's/^Depends: .*\(linux-headers-[0-9][^ ,]*-amd64\).*/\1/p' |
		sort -V | tail -n1)
	[ -n "$dep" ] || die "could not resolve linux-headers-amd64 -> linux-headers-<ver>-amd64 from trixie-backports"
	echo "${dep#linux-headers-}"
}

ensure_host_tools
mkdir -p "$CACHE"
exec 8>"$CACHE/buildroot.lock"
flock 8
KVER=$(resolve_kver)
log "kernel headers version: $KVER"

if [ -e "$ROOT/.usb4rescue-ok" ] && [ "$(cat "$ROOT/.usb4rescue-ok")" = "$KVER" ] &&
	[ -d "$ROOT/usr/src/linux-headers-$KVER" ]; then
	log "reusing $ROOT"
	echo "$ROOT"
	exit 0
fi

# mmdebstrap gives apt a pipe by number ("cat >&N") that apt runs through dash, and
# dash takes only fds 0-9. Lock fds inherited from our callers (ours, build-kmod.sh's,
# flock wrappers') push that pipe to 10 or above ("Bad fd number"), so mmdebstrap runs
# with every inherited fd above 2 closed (the locks stay held by this shell).
without_inherited_fds() {
	local fd closes=""
	for fd in $(ls /proc/$$/fd); do
		[ "$fd" -gt 2 ] && closes+=" $fd>&-"
	done
	eval '"$@"'"$closes"
}

log "creating $ROOT (mmdebstrap, about 30-60 s)"
TMPROOT=$(mktemp -d "$CACHE/buildroot.tmp.XXXXXX")
trap 'rm -rf --one-file-system "$TMPROOT"' EXIT
rmdir "$TMPROOT"
if ! without_inherited_fds mmdebstrap --variant=apt \
	--include="gcc-14,make,libc6-dev,linux-headers-$KVER,kmod,xz-utils" \
	trixie "$TMPROOT" \
	"deb $MIRROR trixie main" \
	"deb $MIRROR trixie-backports main" >&2; then
	die "mmdebstrap failed to create the trixie build root (see messages above)"
fi
echo "$KVER" >"$TMPROOT/.usb4rescue-ok"
if [ -e "$ROOT" ]; then
	rm -rf --one-file-system "$ROOT"
fi
mv "$TMPROOT" "$ROOT"
trap - EXIT
log "ready: $ROOT"
echo "$ROOT"
