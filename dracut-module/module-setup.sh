#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-only
#
# dracut module "usb4rescue": runs the static `rescue` binary (usb4rescue) from
# the initramfs before the root filesystem is mounted, when the kernel command
# line asks for it with rd.usb4rescue=backup|serve|restore|menu (rescue reads
# every rd.usb4rescue.* option itself; see the README). Opt-in: only in initramfs
# images built with `dracut --add usb4rescue` or add_dracutmodules+=" usb4rescue ".

# Where the rescue binary is taken from: $USB4RESCUE_BIN, else the first of
# these that exists.
usb4rescue_bin() {
    local p
    for p in "${USB4RESCUE_BIN:-}" /usr/local/sbin/rescue /usr/sbin/rescue \
        /usr/local/bin/rescue /usr/bin/rescue; do
        [[ -n $p && -x $p ]] && {
            echo "$p"
            return 0
        }
    done
    return 1
}

# called by dracut: 255 = only when asked for (never added automatically)
check() {
    usb4rescue_bin > /dev/null || {
        derror "usb4rescue: the rescue binary is missing (install it as /usr/local/sbin/rescue or set USB4RESCUE_BIN)"
        return 1
    }
    return 255
}

# called by dracut: needs only the base module (udev, modprobe, mount)
depends() {
    echo base
    return 0
}

# called by dracut: the modules rescue loads first (ConfigFS and the USB4STREAM
# stack, as `rescue init --stack-modules` lists them; they pull in their own
# dependencies)
installkernel() {
    local bin m mods
    bin=$(usb4rescue_bin) || return 1
    mods=$("$bin" init --stack-modules) || {
        derror "usb4rescue: $bin init --stack-modules failed"
        return 1
    }
    # Installed even in host-only images: the cable is usually plugged in later.
    # shellcheck disable=SC2086 # one module name per word
    hostonly='' instmods $mods
    for m in $mods; do
        if ! find "$srcmods/kernel" -name "$m.ko*" -print -quit 2> /dev/null | grep -q . &&
            ! grep -q "/$m\.ko" "$srcmods/modules.builtin" 2> /dev/null; then
            dwarn "usb4rescue: kernel $kernel has no $m module: rescue needs Linux >= 7.2 with CONFIG_USB4_STREAM"
        fi
    done
    return 0
}

# called by dracut: the static rescue binary, the runner and the pre-mount hook
install() {
    local bin
    bin=$(usb4rescue_bin) || return 1
    inst_simple "$bin" /usr/bin/rescue
    inst_multiple sleep udevadm
    inst_script "$moddir/usb4rescue-run.sh" /usr/bin/usb4rescue-run
    inst_hook pre-mount 40 "$moddir/usb4rescue-pre-mount.sh"
}
