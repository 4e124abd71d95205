#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-only
#
# TEST ONLY dracut module "usb4vcable-test": adds usb4vcable.ko, the virtual USB4
# cable of the VM tests (kmod/), from $USB4VCABLE_KO, so that the usb4rescue module
# can be tried in QEMU. Never install it on a real machine.

# called by dracut: only when asked for, and only with the module file given
check() {
    [[ -f ${USB4VCABLE_KO:-} ]] || return 1
    return 255
}

# called by dracut: the module under test
depends() {
    echo usb4rescue
    return 0
}

# called by dracut: usb4vcable.ko as an extra module (dracut runs depmod afterwards)
installkernel() {
    inst_simple "$USB4VCABLE_KO" "/lib/modules/$kernel/extra/usb4vcable.ko"
    hostonly='' instmods configfs
}

# called by dracut: keep udev from loading the real stack for the virtual cable's
# services (usb4vcable registers the thunderbolt bus itself; thunderbolt would clash)
install() {
    mkdir -p "$initdir/etc/modprobe.d"
    printf '%s\n' "# usb4vcable-test: the virtual cable replaces the real stack" \
        "blacklist thunderbolt_stream" "blacklist thunderbolt" \
        > "$initdir/etc/modprobe.d/usb4vcable-test.conf"
}
