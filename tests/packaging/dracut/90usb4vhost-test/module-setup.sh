#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-only
#
# TEST ONLY dracut module "usb4vhost-test": adds usb4vhost.ko, the virtual USB4 host of
# the VM tests (kmod/), from $USB4VHOST_KO, so that the usb4rescue module can be tried
# in QEMU with the kernel's own thunderbolt_stream on top. Never install it on a real
# machine.

# called by dracut: only when asked for, and only with the module file given
check() {
    [[ -f ${USB4VHOST_KO:-} ]] || return 1
    return 255
}

# called by dracut: the module under test
depends() {
    echo usb4rescue
    return 0
}

# called by dracut: usb4vhost.ko as an extra module (dracut runs depmod afterwards:
# it exports thunderbolt.ko's symbols, so modules.dep has thunderbolt_stream need it)
installkernel() {
    inst_simple "$USB4VHOST_KO" "/lib/modules/$kernel/extra/usb4vhost.ko"
    hostonly='' instmods configfs
}

# called by dracut: usb4vhost stands in for thunderbolt (they register the same bus and
# export the same symbols): a request for thunderbolt, by udev or as a dependency, loads
# usb4vhost instead, so the real one never loads beside it
install() {
    mkdir -p "$initdir/etc/modprobe.d"
    printf '%s\n' "# usb4vhost-test: the virtual USB4 host stands in for thunderbolt" \
        "install thunderbolt modprobe --ignore-install usb4vhost \$CMDLINE_OPTS" \
        > "$initdir/etc/modprobe.d/usb4vhost-test.conf"
}
