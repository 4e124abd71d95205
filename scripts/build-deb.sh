#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-only
#
# build-deb.sh: the Debian package usb4rescue_VERSION_amd64.deb from this checkout,
# checked with lintian (no errors allowed; the warnings left are explained in
# scripts/deb/lintian-overrides). Prints the package's path as the last line.
#
#   scripts/build-deb.sh             then: apt install ./usb4rescue_*.deb (as root)
#
# Contents: the static rescue (x86_64-unknown-linux-musl, stripped) in /usr/sbin, its
# man pages rescue(8) and rescue-SUBCOMMAND(8) and the bash, zsh and fish completions
# (made by the hidden `rescue generate-docs`, so they match the binary), the dracut
# module in /usr/lib/dracut/modules.d/90usb4rescue (opt-in: it changes no initramfs
# until `dracut --add usb4rescue`), README.md, the copyright file and a changelog.
#
# Installs what it needs (scripts/deps.sh) when run as root. The package and its
# staging tree are in ${USB4RESCUE_CACHE:-/var/cache/usb4rescue}/deb; cargo builds in
# its usual target directory (CARGO_TARGET_DIR or ./target); RESCUE=PATH packages that
# static binary instead, built from this checkout. Without .git (a
# tarball), set USB4RESCUE_COMMIT for `rescue --version`; SOURCE_DATE_EPOCH (default:
# the commit's date) fixes the timestamps, so the same checkout gives the same bytes.
set -euo pipefail
cd "$(dirname "$0")/.."
TOP=$PWD
export USB4RESCUE_CACHE=${USB4RESCUE_CACHE:-/var/cache/usb4rescue}
# shellcheck source=scripts/deps.sh
. scripts/deps.sh
log() { echo "build-deb: $*" >&2; }
die() { echo "build-deb: ERROR: $*" >&2; exit 1; }

ensure_deps build-essential musl-tools binutils file python3 lintian >&2 || die "missing build dependencies (see above)"
umask 022
TARGET=x86_64-unknown-linux-musl
if [ -n "${RESCUE:-}" ]; then
    BIN=$RESCUE # built from this checkout already (tests/packaging/run.sh: prepare.sh's)
else
    log "cargo build --release --target $TARGET -p rescue"
    nice cargo build -q --release --locked --target "$TARGET" -p rescue >&2 || die "cargo build failed"
    TDIR=$(cargo metadata -q --format-version 1 --no-deps |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
    BIN=$TDIR/$TARGET/release/rescue
fi
[ -x "$BIN" ] || die "no rescue binary at $BIN"
file "$BIN" | grep -Eq 'statically linked|static-pie linked' || die "$BIN is not statically linked"

VERSION=$("$BIN" --version | sed -n 's/^rescue \([^ ]*\) (commit \(.*\))$/\1/p')
COMMIT=$("$BIN" --version | sed -n 's/^rescue [^ ]* (commit \(.*\))$/\1/p')
[ -n "$VERSION" ] || die "cannot read the version from \`$BIN --version\`"
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2> /dev/null || date +%s)
fi
export SOURCE_DATE_EPOCH
ARCH=amd64
NAME=usb4rescue
OUT=$USB4RESCUE_CACHE/deb
ROOT=$OUT/staging
DEB=$OUT/${NAME}_${VERSION}_${ARCH}.deb
DOC=$ROOT/usr/share/doc/$NAME
rm -rf "$ROOT"
mkdir -p "$ROOT/DEBIAN" "$DOC"

# The binary (stripped: lintian's unstripped-binary-or-object) and the dracut module.
strip --remove-section=.comment -o "$OUT/rescue" "$BIN"
make -s -C dracut-module install DESTDIR="$ROOT" PREFIX=/usr RESCUE="$OUT/rescue" >&2
# Man pages and completions from the binary being packaged.
GEN=$OUT/generated
rm -rf "$GEN"
"$OUT/rescue" generate-docs "$GEN" > /dev/null || die "rescue generate-docs failed"
install -d "$ROOT/usr/share/man/man8"
for page in "$GEN"/man/*.8; do
    gzip -9n < "$page" > "$ROOT/usr/share/man/man8/$(basename "$page").gz"
done
install -D -m 0644 "$GEN/completions/rescue.bash" "$ROOT/usr/share/bash-completion/completions/rescue"
install -D -m 0644 "$GEN/completions/_rescue" "$ROOT/usr/share/zsh/vendor-completions/_rescue"
install -D -m 0644 "$GEN/completions/rescue.fish" "$ROOT/usr/share/fish/vendor_completions.d/rescue.fish"

# Documentation: README, copyright (machine-readable), changelog, lintian's overrides.
gzip -9n < README.md > "$DOC/README.md.gz"
install -m 0644 scripts/deb/copyright "$DOC/copyright"
DATE=$(date -u -R -d "@$SOURCE_DATE_EPOCH")
MAINTAINER="usb4rescue developers <usb4rescue@example.org>"
printf '%s (%s) unstable; urgency=medium\n\n  * Built from commit %s.\n\n -- %s  %s\n' \
    "$NAME" "$VERSION" "$COMMIT" "$MAINTAINER" "$DATE" | gzip -9n > "$DOC/changelog.gz"
install -D -m 0644 scripts/deb/lintian-overrides "$ROOT/usr/share/lintian/overrides/$NAME"

SIZE=$(du -sk --exclude=DEBIAN "$ROOT" | cut -f1)
sed -e "s/@VERSION@/$VERSION/" -e "s/@ARCH@/$ARCH/" -e "s/@SIZE@/$SIZE/" \
    -e "s/@MAINTAINER@/$MAINTAINER/" scripts/deb/control > "$ROOT/DEBIAN/control"
(cd "$ROOT" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z |
    xargs -0 md5sum > DEBIAN/md5sums)
chmod 0644 "$ROOT/DEBIAN/control" "$ROOT/DEBIAN/md5sums"
find "$ROOT" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
dpkg-deb --root-owner-group -Zxz --build "$ROOT" "$DEB.tmp" >&2 || die "dpkg-deb --build failed"
mv "$DEB.tmp" "$DEB"

# --fail-on error: warnings are printed (each one left is explained in the overrides).
log "lintian $DEB"
lintian --fail-on error "$DEB" >&2 || die "lintian found errors in $DEB (above)"
log "$(dpkg-deb -f "$DEB" Package Version Installed-Size | tr '\n' ' '), $(stat -c %s "$DEB") bytes"
echo "$DEB"
