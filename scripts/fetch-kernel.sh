#!/usr/bin/env bash
# fetch-kernel.sh: fetch the current Debian trixie-backports kernel (vmlinuz + modules)
# for the VM tests and the rescue image, without touching the host's apt configuration.
#
# What it does
#   1. Keeps a private apt state in $CACHE/apt-trixie-backports/ (sources list, lists,
#      package cache, empty dpkg status) and runs apt with
#        -o Dir::Etc::SourceList=<private list> -o Dir::Etc::SourceParts=-
#        -o Dir::State::Lists=<private> -o Dir::Cache=<private> -o Dir::State::status=<empty>
#      so /etc/apt and /var/lib/apt are never read for sources nor written.
#   2. Resolves, from the archive's metadata at run time, which versioned package the
#      metapackage linux-image-amd64 (trixie-backports) depends on
#      (linux-image-<kver>); no version is hard-coded.
#   3. `apt-get download`s that package and unpacks it with `dpkg-deb -x` into
#        $CACHE/kernel/<kver>/vmlinuz
#        $CACHE/kernel/<kver>/config                 (the kernel's .config, for checks)
#        $CACHE/kernel/<kver>/lib/modules/<kver>/    (modules, with depmod run on them)
#      The directory appears atomically (unpacked beside it, then renamed).
#   4. Prints the kernel directory as the LAST line of stdout (messages go to stderr).
#
# Cache and re-runs
#   CACHE=${USB4RESCUE_CACHE:-/var/cache/usb4rescue}. The package lists are refreshed at
#   most once per USB4RESCUE_APT_MAX_AGE seconds (default 3600); a re-run whose kernel is
#   already unpacked downloads nothing and takes well under a second.
#   USB4RESCUE_OFFLINE=1 skips the network and uses the newest cached kernel.
#   If the archive cannot be reached but a kernel is cached, that kernel is used with a
#   warning; if nothing is cached the script fails, saying what failed and what to do.
#
# Environment
#   USB4RESCUE_CACHE          cache root (default /var/cache/usb4rescue)
#   USB4RESCUE_DEBIAN_MIRROR  archive URL (default http://deb.debian.org/debian)
#   USB4RESCUE_KERNEL_SUITE   suite (default trixie-backports)
#   USB4RESCUE_APT_MAX_AGE    seconds before the lists are refreshed (default 3600)
#   USB4RESCUE_OFFLINE=1      never touch the network
#
# Usage: scripts/fetch-kernel.sh            -> prints e.g. /var/cache/usb4rescue/kernel/7.3.1+bpo-amd64
# Needs: apt, dpkg-deb, kmod (depmod). Run as root or with a writable cache directory.
set -euo pipefail

CACHE=${USB4RESCUE_CACHE:-/var/cache/usb4rescue}
MIRROR=${USB4RESCUE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=${USB4RESCUE_KERNEL_SUITE:-trixie-backports}
MAX_AGE=${USB4RESCUE_APT_MAX_AGE:-3600}
OFFLINE=${USB4RESCUE_OFFLINE:-0}
META=linux-image-amd64

APTDIR=$CACHE/apt-$SUITE
KDIR_ROOT=$CACHE/kernel

log() { printf 'fetch-kernel: %s\n' "$*" >&2; }
die() { printf 'fetch-kernel: ERROR: %s\n' "$*" >&2; exit 1; }

need() { # need COMMAND PACKAGE
    command -v "$1" >/dev/null 2>&1 && return 0
    log "installing $2 (for $1)"
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q "$2" >&2 ||
        die "'$1' is missing and 'apt-get install $2' failed: install it and re-run"
}
need apt-get apt
need dpkg-deb dpkg
need depmod kmod

mkdir -p "$APTDIR/lists/partial" "$APTDIR/cache/archives/partial" "$APTDIR/preferences.d" "$KDIR_ROOT" ||
    die "cannot create $APTDIR (set USB4RESCUE_CACHE to a writable directory)"

# Newest complete cached kernel (a dir with vmlinuz and a .complete stamp), or empty.
newest_cached() {
    local d best=
    for d in "$KDIR_ROOT"/*/; do
        d=${d%/}
        [ -f "$d/.complete" ] && [ -f "$d/vmlinuz" ] || continue
        if [ -z "$best" ] || dpkg --compare-versions "$(basename "$d")" gt "$(basename "$best")"; then
            best=$d
        fi
    done
    printf '%s' "$best"
}

use_cached_or_die() { # use_cached_or_die REASON
    local c
    c=$(newest_cached)
    if [ -n "$c" ]; then
        log "WARNING: $1"
        log "WARNING: using the cached kernel $(basename "$c") (may not be the newest)"
        printf '%s\n' "$c"
        exit 0
    fi
    die "$1
  No kernel is cached in $KDIR_ROOT either.
  What to do: check that $MIRROR is reachable (proxy? DNS? try
  'curl -sI $MIRROR/dists/$SUITE/Release'), or set USB4RESCUE_DEBIAN_MIRROR to a
  reachable Debian mirror, then re-run $0."
}

# One run at a time per cache (concurrent apt runs on the same private state clash).
if command -v flock >/dev/null 2>&1; then
    exec 9>"$APTDIR/.lock"
    flock -w 600 9 || die "another fetch-kernel.sh holds $APTDIR/.lock for 10 minutes"
fi

[ "$OFFLINE" = 1 ] && use_cached_or_die "USB4RESCUE_OFFLINE=1: not contacting the archive"

# Private apt configuration: never the host's sources, lists, cache or dpkg status.
find_keyrings() {
    keyrings=()
    for k in /usr/share/keyrings/debian-archive-keyring.gpg \
             /usr/share/keyrings/debian-archive-trixie-automatic.gpg \
             /usr/share/keyrings/debian-archive-trixie-stable.gpg; do
        [ -f "$k" ] && keyrings+=("$k")
    done
    [ ${#keyrings[@]} -gt 0 ]
}
if ! find_keyrings; then
    log "installing debian-archive-keyring (Debian's archive signing keys)"
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q debian-archive-keyring >&2
    find_keyrings || die "no Debian archive keyring in /usr/share/keyrings: apt-get install debian-archive-keyring"
fi
signed_by=$(IFS=,; printf '%s' "${keyrings[*]}")
src_line=$(printf 'deb [arch=amd64 signed-by=%s] %s %s main' "$signed_by" "$MIRROR" "$SUITE")
if [ "$(cat "$APTDIR/sources.list" 2>/dev/null)" != "$src_line" ]; then
    printf '%s\n' "$src_line" > "$APTDIR/sources.list"
    rm -f "$APTDIR/lists/.updated"   # another mirror: its lists must be fetched
fi
: > "$APTDIR/status"
APT_OPTS=(
    -o "Dir::Etc::SourceList=$APTDIR/sources.list"
    -o "Dir::Etc::SourceParts=-"
    -o "Dir::Etc::Preferences=/dev/null"
    -o "Dir::Etc::PreferencesParts=$APTDIR/preferences.d"
    -o "Dir::State::Lists=$APTDIR/lists"
    -o "Dir::State::status=$APTDIR/status"
    -o "Dir::Cache=$APTDIR/cache"
    -o "Dir::Cache::archives=$APTDIR/cache/archives"
    -o "Dir::Cache::pkgcache=$APTDIR/cache/pkgcache.bin"
    -o "Dir::Cache::srcpkgcache=$APTDIR/cache/srcpkgcache.bin"
    -o "APT::Architecture=amd64"
    -o "APT::Architectures::=amd64"
    -o "Acquire::Languages=none"
    -o "Acquire::Retries=2"
    -o "Acquire::http::Timeout=30"
    -o "APT::Update::Post-Invoke::="
    -o "APT::Update::Post-Invoke-Success::="
    -o "Debug::NoLocking=1"
    -o "APT::Sandbox::User=root"
)

stamp=$APTDIR/lists/.updated
age=$MAX_AGE
[ -f "$stamp" ] && age=$(( $(date +%s) - $(stat -c %Y "$stamp") ))
if [ ! -f "$stamp" ] || [ "$age" -ge "$MAX_AGE" ]; then
    log "refreshing package lists for $SUITE from $MIRROR"
    if ! out=$(apt-get "${APT_OPTS[@]}" -q update 2>&1) ||
         grep -qE '^(W|E): (Failed|Some index files|The repository|GPG error)' <<<"$out"; then
        printf '%s\n' "$out" | tail -n 5 >&2
        use_cached_or_die "could not download the $SUITE package lists from $MIRROR (apt-get update failed, output above)"
    fi
    touch "$stamp"
fi

# Resolve the versioned kernel package from the metapackage's dependencies.
cand=$(apt-cache "${APT_OPTS[@]}" policy "$META" 2>/dev/null | awk '/Candidate:/ {print $2; exit}')
if [ -z "$cand" ] || [ "$cand" = "(none)" ]; then
    rm -f "$stamp"
    use_cached_or_die "$META has no candidate in $SUITE (lists empty or stale: $APTDIR/lists)"
fi
deps=$(apt-cache "${APT_OPTS[@]}" show "$META=$cand" | awk -F': ' '/^Depends:/ {print $2; exit}')
# First alternative of the first dependency named linux-image-*, e.g. linux-image-7.3.1+bpo-amd64
pkg=$(tr ',|' '\n\n' <<<"$deps" | sed 's/^ *//; s/ .*//' | grep -m1 '^linux-image-' || true)
[ -n "$pkg" ] || die "cannot find a linux-image-<ver> dependency of $META $cand (Depends: $deps)"
kver=${pkg#linux-image-}
kver=${kver%-unsigned}
kdir=$KDIR_ROOT/$kver
log "$META $cand ($SUITE) -> $pkg"

if [ -f "$kdir/.complete" ] && [ -f "$kdir/vmlinuz" ]; then
    log "cached: $kdir"
    printf '%s\n' "$kdir"
    exit 0
fi

# The versioned package may hold everything (older layout) or depend on split packages
# (linux-binary-<kver>, linux-modules-<kver>, linux-base-<kver>): collect, recursively,
# every dependency whose name carries <kver>, download them all and unpack them together.
pkgs=("$pkg")
queue=("$pkg")
while [ ${#queue[@]} -gt 0 ]; do
    p=${queue[0]}; queue=("${queue[@]:1}")
    for d in $(apt-cache "${APT_OPTS[@]}" show "$p" 2>/dev/null |
               awk '/^(Pre-)?Depends:/ {sub(/^[^:]*: /, ""); print}' |
               tr ',|' '\n\n' | sed 's/^ *//; s/ .*//' | grep -F -- "$kver" | sort -u); do
        case " ${pkgs[*]} " in *" $d "*) ;; *) pkgs+=("$d"); queue+=("$d") ;; esac
    done
done
log "packages: ${pkgs[*]}"

( cd "$APTDIR/cache/archives" && apt-get "${APT_OPTS[@]}" -q download "${pkgs[@]}" >&2 ) ||
    use_cached_or_die "apt-get download ${pkgs[*]} failed (network or mirror problem)"

tmp=$(mktemp -d "$KDIR_ROOT/.unpack.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
debs=()
for p in "${pkgs[@]}"; do
    deb=$(ls -t "$APTDIR/cache/archives/${p}_"*.deb 2>/dev/null | head -n1)
    [ -n "$deb" ] || die "apt-get download $p reported success but no .deb is in $APTDIR/cache/archives"
    log "unpacking $(basename "$deb")"
    dpkg-deb -x "$deb" "$tmp/root" || die "dpkg-deb -x $deb failed (corrupt download? delete it and re-run)"
    debs+=("$(basename "$deb")")
done

# The modules directory name is the authoritative kernel release.
mods=("$tmp"/root/lib/modules/*/ "$tmp"/root/usr/lib/modules/*/)
real_kver=
for m in "${mods[@]}"; do [ -d "$m" ] && real_kver=$(basename "$m") && moddir=${m%/} && break; done
[ -n "$real_kver" ] || die "$pkg contains no lib/modules/<kver>/ directory: unexpected package layout"
[ "$real_kver" = "$kver" ] || { log "kernel release is $real_kver (package $pkg)"; kver=$real_kver; kdir=$KDIR_ROOT/$kver; }
# vmlinuz and config: boot/vmlinuz-<kver> (classic layout) or lib/modules/<kver>/vmlinuz
# (split layout, linux-binary-<kver>).
vml=$(ls "$moddir/vmlinuz" "$tmp"/root/boot/vmlinuz-"$kver" "$tmp"/root/boot/vmlinuz-* 2>/dev/null | head -n1 || true)
[ -n "$vml" ] || die "no vmlinuz in ${pkgs[*]} (looked in lib/modules/$kver/ and boot/): unexpected package layout"
cfg=$(ls "$moddir/config" "$tmp"/root/boot/config-* 2>/dev/null | head -n1 || true)

mkdir -p "$tmp/out/lib/modules"
cp "$vml" "$tmp/out/vmlinuz"
[ -n "$cfg" ] && cp "$cfg" "$tmp/out/config"
mv "$moddir" "$tmp/out/lib/modules/$kver"
rm -f "$tmp/out/lib/modules/$kver/vmlinuz"
depmod -b "$tmp/out" "$kver" || die "depmod -b $tmp/out $kver failed"
printf '%s\n' "${debs[@]}" > "$tmp/out/.complete"
rm -rf "$kdir"
mv "$tmp/out" "$kdir"
for p in "${pkgs[@]}"; do rm -f "$APTDIR/cache/archives/${p}_"*.deb; done   # unpacked: not needed
log "kernel $kver ready in $kdir"
printf '%s\n' "$kdir"
