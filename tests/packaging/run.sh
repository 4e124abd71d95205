#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-only
#
# run.sh: the packaging tests (dracut module and mkosi USB image), end to end.
#
#   tests/packaging/run.sh [--only dracut|deb|usb] [--keep]
#
#  1. prepare.sh          packaging root (trixie + mkosi 25.3 + dracut 106), kernel,
#                         usb4vhost.ko, static rescue, cable-ctl, the peer's initramfs
#  2. dracut-install      `make -C dracut-module install` into the packaging root
#  3. dracut-build        dracut --add 'usb4rescue usb4vhost-test' for the trixie-backports
#                         kernel (usb4vhost-test: tests/packaging/dracut/, test only)
#  4. lsinitrd            our files are in the initramfs, Debian's thunderbolt_stream.ko.xz
#                         byte for byte
#     dracut-optin        without --add usb4rescue, the installed module stays out
#  5. deb-build           scripts/build-deb.sh: the Debian package, lintian without errors
#     deb-*               deb-checks.sh in a throwaway overlay of the packaging root: apt
#                         install, rescue --version, man -l, bash completion, dracut
#                         --add usb4rescue, apt-get purge; then nothing of it left
#  6. mkosi-build         tests/packaging/build-image.sh (mkosi.conf), image <= 60 MiB
#     image-layout        one kernel and one initramfs on the ESP, no UKI
#  7. VM tests            vmtests.py: dracut-backup, dracut-plain, dracut-menu, usb-menu, usb-backup, usb-bios
#
# The last line is "N passed, N failed"; the exit status is non-zero on any failure.
# Builds go to ${USB4RESCUE_CACHE:-/var/cache/usb4rescue}/packaging, VM logs to a /tmp
# directory (kept and printed when something fails).
set -uo pipefail
PLOG_NAME=packaging
# shellcheck source=tests/packaging/lib.sh
. "$(dirname "$0")/lib.sh"

ONLY=all
KEEP=()
while [ $# -gt 0 ]; do
    case "$1" in
        --only) ONLY=$2; shift 2 ;;
        --keep) KEEP=(--keep); shift ;;
        *) echo "usage: $0 [--only dracut|deb|usb] [--keep]" >&2; exit 2 ;;
    esac
done
PASSED=0
FAILED=0
T0=$(date +%s)
pass() { PASSED=$((PASSED + 1)); echo "PASS $1"; }
fail() { FAILED=$((FAILED + 1)); echo "FAIL $1: $2"; }
finish() {
    plog "wall time $(( $(date +%s) - T0 ))s"
    echo "$PASSED passed, $FAILED failed"
    [ "$FAILED" -eq 0 ] && [ "$PASSED" -gt 0 ]
    exit $?
}
[ "$(id -u)" = 0 ] || { fail setup "must run as root"; finish; }

if ! "$TOP/tests/packaging/prepare.sh"; then
    fail prepare "tests/packaging/prepare.sh failed (see above)"
    finish
fi
# shellcheck source=/dev/null
. "$PKGOUT/inputs.env"
plog "inputs ready after $(( $(date +%s) - T0 ))s"

for f in "$TOP"/dracut-module/*.sh; do
    case "$f" in
        */module-setup.sh) bash -n "$f" ;;
        *) sh -n "$f" ;;
    esac || fail "syntax $(basename "$f")" "shell syntax error"
done

# image_layout IMG: the ESP (at 1 MiB, systemd-repart's first partition) holds one
# kernel and one rescue initramfs, named by the systemd-boot entry and by GRUB's
# menu alike, and no UKI (which would hold them a second time).
image_layout() {
    local esp=$PKGOUT/esp-list.txt
    if ! in_pkgroot "mdir -/ -b -i /img/$(basename "$1")@@1M ::/ && for f in \$(mdir -/ -b -i /img/$(basename "$1")@@1M ::/loader/entries); do
            mtype -i /img/$(basename "$1")@@1M \$f; done && mtype -i /img/$(basename "$1")@@1M ::/grub/grub.cfg" \
            "$(dirname "$1"):/img" > "$esp" 2>&1; then
        fail image-layout "mdir/mtype on the ESP failed ($esp)"
        return
    fi
    local kernels uki entry_linux grub_linux entry_initrd grub_initrd
    kernels=$(grep -c '^::/.*/vmlinuz$' "$esp")
    uki=$(grep -i '^::/EFI/Linux/.' "$esp" | wc -l)
    entry_linux=$(sed -n 's/^linux \(.*\)/\1/p' "$esp")
    grub_linux=$(sed -n 's/^ \+linux \([^ ]*\) .*/\1/p' "$esp")
    entry_initrd=$(sed -n 's/^initrd \(.*\)/\1/p' "$esp" | xargs)
    grub_initrd=$(sed -n 's/^ \+initrd \(.*\)/\1/p' "$esp" | xargs)
    if [ "$kernels" -eq 1 ] && [ "$uki" -eq 0 ] && [ -n "$entry_linux" ] && [ "$entry_linux" = "$grub_linux" ] &&
        grep -q "^::$entry_linux\$" "$esp" && [ -n "$entry_initrd" ] && [ "$entry_initrd" = "$grub_initrd" ]; then
        pass "image-layout (one kernel, $entry_linux, for systemd-boot and GRUB; no UKI)"
    else
        fail image-layout "$kernels kernels, $uki files in EFI/Linux, entry linux '$entry_linux' initrd '$entry_initrd', GRUB linux '$grub_linux' initrd '$grub_initrd' ($esp)"
    fi
}

VMTESTS=()
if [ "$ONLY" = all ] || [ "$ONLY" = dracut ]; then
    DRACUT_INITRD=$PKGOUT/dracut-initrd.img
    if make -s -C "$TOP/dracut-module" install DESTDIR="$PKGROOT" RESCUE="$PKGOUT/rescue" &&
        [ -x "$PKGROOT/usr/lib/dracut/modules.d/90usb4rescue/module-setup.sh" ] &&
        [ -x "$PKGROOT/usr/local/sbin/rescue" ]; then
        pass dracut-install
    else
        fail dracut-install "make -C dracut-module install DESTDIR=$PKGROOT failed"
    fi
    t=$(date +%s)
    rm -f "$DRACUT_INITRD"
    # --no-hostonly: the build root's hardware is not the VM's. The virtio and ext4
    # drivers are what the test VM's root disk needs.
    if in_pkgroot "USB4VHOST_KO=/out/usb4vhost.ko nice dracut --force --no-hostonly --no-hostonly-cmdline \
            --add 'usb4rescue usb4vhost-test' \
            --omit 'btrfs crypt dm lvm mdraid nvdimm tpm2-tss multipath iscsi nfs plymouth' \
            --add-drivers 'virtio_pci virtio_blk ext4' /out/dracut-initrd.img $KVER" \
            "$PKGOUT:/out" "$KDIR/lib/modules/$KVER:/lib/modules/$KVER" \
            "$TOP/tests/packaging/dracut/90usb4vhost-test:/usr/lib/dracut/modules.d/90usb4vhost-test" \
            > "$PKGOUT/dracut.log" 2>&1 && [ -s "$DRACUT_INITRD" ]; then
        pass "dracut-build ($(( $(date +%s) - t ))s, $(( $(stat -c %s "$DRACUT_INITRD") >> 20 )) MiB)"
    else
        tail -n 30 "$PKGOUT/dracut.log"
        fail dracut-build "dracut failed (log: $PKGOUT/dracut.log)"
    fi
    if [ -s "$DRACUT_INITRD" ]; then
        in_pkgroot "lsinitrd /out/dracut-initrd.img" "$PKGOUT:/out" > "$PKGOUT/lsinitrd.txt" 2>&1
        missing=()
        for want in "^usb4rescue\$" "^usb4vhost-test\$" " usr/bin/rescue\$" " usr/bin/usb4rescue-run\$" \
            "hooks/pre-mount/[0-9]*-usb4rescue-pre-mount.sh\$" "/thunderbolt/thunderbolt.ko" \
            "/thunderbolt/thunderbolt_stream.ko" "/configfs/configfs.ko" "extra/usb4vhost.ko"; do
            grep -q -- "$want" "$PKGOUT/lsinitrd.txt" || missing+=("$want")
        done
        # The VM tests run the kernel package's own driver: dracut must not have changed it.
        tbs=lib/modules/$KVER/kernel/drivers/thunderbolt/thunderbolt_stream.ko.xz
        want_sha=$(sha256sum < "$KDIR/$tbs" | cut -d' ' -f1)
        got_sha=$(in_pkgroot "lsinitrd /out/dracut-initrd.img -f usr/$tbs" "$PKGOUT:/out" 2> /dev/null |
            sha256sum | cut -d' ' -f1)
        [ "$got_sha" = "$want_sha" ] || missing+=("usr/$tbs as in the kernel package (sha256 $want_sha, got $got_sha)")
        if [ ${#missing[@]} -eq 0 ]; then pass lsinitrd; else fail lsinitrd "not in the initramfs: ${missing[*]}"; fi
        VMTESTS+=(dracut-backup dracut-plain dracut-menu)
    fi
    # Opt-in: installed, but not asked for, the module stays out (--no-kernel: fast).
    if in_pkgroot "dracut -q --force --no-kernel --kver $KVER /out/optin.img > /dev/null 2>&1 &&
            lsinitrd /out/optin.img" "$PKGOUT:/out" > "$PKGOUT/lsinitrd-optin.txt" 2>&1 &&
        grep -q 'dracut modules:' "$PKGOUT/lsinitrd-optin.txt"; then
        if grep -q usb4rescue "$PKGOUT/lsinitrd-optin.txt"; then
            fail dracut-optin "usb4rescue is in an initramfs built without --add usb4rescue"
        else
            pass dracut-optin
        fi
    else
        fail dracut-optin "dracut --no-kernel failed ($PKGOUT/lsinitrd-optin.txt)"
    fi
    rm -f "$PKGOUT/optin.img"
fi

if [ "$ONLY" = all ] || [ "$ONLY" = deb ]; then
    t=$(date +%s)
    # The static rescue prepare.sh built from this checkout: no second cargo run.
    if DEB=$(RESCUE=$PKGOUT/rescue "$TOP/scripts/build-deb.sh" 2> "$PKGOUT/build-deb.log" | tail -n1) && [ -f "$DEB" ]; then
        warnings=$(grep -c '^W: ' "$PKGOUT/build-deb.log")
        pass "deb-build ($(( $(date +%s) - t ))s, $(( $(stat -c %s "$DEB") >> 10 )) KiB, lintian: 0 errors, $warnings warnings)"
        OV=$PKGOUT/deb-overlay
        in_pkgroot_overlay "$OV" "/src/tests/packaging/deb-checks.sh /debs/$(basename "$DEB") $KVER" \
            "$(dirname "$DEB"):/debs" "$KDIR/lib/modules/$KVER:/lib/modules/$KVER" > "$PKGOUT/deb-checks.log" 2>&1
        while read -r verdict rest; do
            case "$verdict" in
                OK) pass "${rest%%:*} (${rest#*: })" ;;
                NOTOK) fail "${rest%%:*}" "${rest#*: }" ;;
            esac
        done < "$PKGOUT/deb-checks.log"
        grep -q '^OK deb-remove' "$PKGOUT/deb-checks.log" || fail deb-checks "see $PKGOUT/deb-checks.log"
        # What the install and the purge changed, outside dpkg's and apt's state, logs
        # and caches: nothing may remain but directories (the overlay's copies of those
        # the files were in) and the whiteout that hid /usr/local/sbin/rescue.
        left=$(cd "$OV/upper" && find . \( -path ./var/lib/dpkg -o -path ./var/lib/apt -o -path ./var/log \
            -o -path ./var/cache \) -prune -o \( -type f -o -type l \) -print)
        if [ -z "$left" ]; then pass "deb-clean (nothing left by the package)"; else fail deb-clean "left in the root: $left"; fi
        rm -rf --one-file-system "$OV"
    else
        tail -n 30 "$PKGOUT/build-deb.log"
        fail deb-build "scripts/build-deb.sh failed (log: $PKGOUT/build-deb.log)"
    fi
fi

if [ "$ONLY" = all ] || [ "$ONLY" = usb ]; then
    t=$(date +%s)
    if IMG=$("$TOP/tests/packaging/build-image.sh" | tail -n1) && [ -f "$IMG" ]; then
        size=$(stat -c %s "$IMG")
        pass "mkosi-build ($(( $(date +%s) - t ))s)"
        if [ "$size" -le $((60 << 20)) ]; then pass "image-size ($((size >> 20)) MiB)"; else fail image-size "$((size >> 20)) MiB > 60 MiB"; fi
        image_layout "$IMG"
        VMTESTS+=(usb-menu usb-backup usb-bios)
    else
        fail mkosi-build "tests/packaging/build-image.sh failed (log: $PKGOUT/mkosi.log)"
    fi
fi

if [ ${#VMTESTS[@]} -gt 0 ]; then
    python3 "$TOP/qemu/vmpair.py" cleanup > /dev/null 2>&1
    only=$(IFS=,; echo "${VMTESTS[*]}")
    python3 "$TOP/tests/packaging/vmtests.py" --kernel "$KDIR/vmlinuz" \
        --dracut-initrd "$PKGOUT/dracut-initrd.img" --peer-initrd "$PEER_INITRD" \
        --usb-image "$PKGOUT/image/usb4rescue.raw" --cable-ctl "$CABLE_CTL" \
        --only "$only" "${KEEP[@]}" 2>&1 | tee "$PKGOUT/vmtests.log"
    line=$(grep -a '^vmtests: [0-9]* passed, [0-9]* failed' "$PKGOUT/vmtests.log" | tail -n1)
    if [ -n "$line" ]; then
        set -- $line
        PASSED=$((PASSED + $2))
        FAILED=$((FAILED + $4))
    else
        fail vmtests "vmtests.py ended without a summary"
    fi
fi
finish
