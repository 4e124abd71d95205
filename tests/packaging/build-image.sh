#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-only
#
# build-image.sh: build the rescue USB stick image with mkosi (mkosi.conf).
#
#   tests/packaging/build-image.sh            -> prints the image path (last line)
#
# 1. tests/packaging/pkgroot.sh: Debian trixie root with mkosi 25.3 (a copy of the
#    cached build root of scripts/buildroot.sh, plus mkosi and dracut)
# 2. scripts/fetch-kernel.sh, scripts/build-kmod.sh: the trixie-backports kernel's
#    modules, usb4vhost.ko (the virtual USB4 host, standing in for thunderbolt.ko only
#    where an ivshmem 1af4:1110 device exists, i.e. in the VM tests; harmless elsewhere)
# 3. the static rescue (musl, stripped), the rescue initramfs (image/) for that kernel
# 4. mkosi -f build in the packaging root (private mount namespace), with --initrd= that
#    initramfs; mkosi.postinst checks the image's kernel is the same version
# Output: $CACHE/packaging/image/usb4rescue.raw (CACHE=${USB4RESCUE_CACHE:-/var/cache/usb4rescue});
# mkosi's package cache in $CACHE/packaging/mkosi-cache. Nothing is written into the
# repository (mounted read-only for mkosi).
set -euo pipefail
PLOG_NAME=build-image
# shellcheck source=tests/packaging/lib.sh
. "$(dirname "$0")/lib.sh"
[ "$(id -u)" = 0 ] || pdie "must run as root (chroot, mounts, mkosi)"
T0=$(date +%s)

"$(dirname "$0")/prepare.sh" >&2 || pdie "preparing the inputs failed (see above)"
# shellcheck source=/dev/null
. "$PKGOUT/inputs.env"

plog "initramfs for the stick (image/): $KVER"
mkdir -p "$PKGOUT/image" "$PKGOUT/mkosi-cache"
(nice "$IMAGE_TOOL" build --kernel-dir "$KDIR" --rescue "$PKGOUT/rescue" --extra-module "$PKGOUT/usb4vhost.ko" -o "$PKGOUT/stick-initrd.img.tmp" >&2) ||
    pdie "image build (the rescue initramfs) failed"
mv "$PKGOUT/stick-initrd.img.tmp" "$PKGOUT/stick-initrd.img"

plog "mkosi build (about 3-5 minutes; the log is $PKGOUT/mkosi.log)"
T1=$(date +%s)
if ! in_pkgroot "cd /src && nice mkosi --output-directory=/out --cache-directory=/mkosi-cache \
        --initrd=/pkg/stick-initrd.img --environment=USB4RESCUE_KVER=$KVER -f build" \
        "$PKGOUT/image:/out" "$PKGOUT/mkosi-cache:/mkosi-cache" "$PKGOUT:/pkg" \
        > "$PKGOUT/mkosi.log" 2>&1; then
    tail -n 40 "$PKGOUT/mkosi.log" >&2
    pdie "mkosi build failed (log: $PKGOUT/mkosi.log)"
fi
IMG=$PKGOUT/image/usb4rescue.raw
[ -f "$IMG" ] || pdie "mkosi did not produce $IMG"
plog "mkosi build: $(( $(date +%s) - T1 ))s; total $(( $(date +%s) - T0 ))s"
plog "image: $IMG, $(( $(stat -c %s "$IMG") >> 20 )) MiB ($(du -k "$IMG" | cut -f1) KiB allocated)"
echo "$IMG"
