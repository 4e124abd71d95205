#!/bin/sh
# SPDX-License-Identifier: GPL-2.0-only
#
# usb4rescue-run: run rescue from a dracut initramfs (called by the pre-mount hook
# when the kernel command line has rd.usb4rescue). Runs as a normal process, not
# as PID 1: it loads the USB4STREAM modules, mounts ConfigFS, runs one rescue
# command on the console and returns; the boot then continues (unless
# rd.usb4rescue.poweroff=1 or rd.usb4rescue.reboot=1).
#
# Kernel command line (the rescue.* options of the rescue initramfs, with the
# prefix rd.usb4rescue.):
#   rd.usb4rescue=MODE        backup | serve | restore | menu (bare rd.usb4rescue: menu;
#                             0, no, off: disabled)
#     backup                  rescue backup: every eligible disk (or .disks) to the peer
#     serve                   rescue serve --once: keep one backup of the peer in .store
#     restore                 rescue restore: asks "yes" on the console unless .yes=1
#     menu                    the rescue menu on the console; Ctrl-D leaves it
#   rd.usb4rescue.disks=sda,nvme0n1      disks to back up (default: all eligible)
#   rd.usb4rescue.label=NAME             label of the backup
#   rd.usb4rescue.peer=0-1.0             the peer's stream service when several
#   rd.usb4rescue.store=SPEC             serve: LABEL=x, UUID=y or /dev/... (mounted
#                                        at /run/usb4rescue/store, unmounted after)
#   rd.usb4rescue.yes=1                  restore without asking
#   rd.usb4rescue.verify=1               restore: read the disks back and compare
#   rd.usb4rescue.map=NAME=TARGET,...    restore: where each backed-up disk goes
#   rd.usb4rescue.backup=ID              restore: which backup (default: newest)
#   rd.usb4rescue.hostname=NAME          this machine's name (and whose backup to restore)
#   rd.usb4rescue.fabric=auto|usb4|virtual  real USB4 stack or the virtual cable (VMs)
#   rd.usb4rescue.wait=SECS              how long to wait for the peer (default 300,
#                                        0 = forever)
#   rd.usb4rescue.poweroff=1, rd.usb4rescue.reboot=1   at the end instead of booting on
#
# Console lines for people and tests: "usb4rescue: MODE started",
# "usb4rescue: MODE finished rc=N", "usb4rescue: continuing the boot".

# shellcheck disable=SC1091
command -v getarg > /dev/null 2>&1 || . /lib/dracut-lib.sh

say() {
    echo "usb4rescue: $*" > /dev/console 2>&1 || echo "usb4rescue: $*" >&2
}

arg() { # arg NAME: value of rd.usb4rescue.NAME= (empty if absent)
    getarg "rd.usb4rescue.$1=" 2> /dev/null || true
}

flag() { # flag NAME: true when rd.usb4rescue.NAME is 1/yes/on/true or bare
    case "$(arg "$1")" in
        1 | y | yes | on | true) return 0 ;;
    esac
    getarg "rd.usb4rescue.$1" > /dev/null 2>&1 && [ -z "$(arg "$1")" ]
}

mode=$(getarg rd.usb4rescue= 2> /dev/null || true)
case "$mode" in
    "" | 1) mode=menu ;; # bare rd.usb4rescue
    0 | no | off | false) exit 0 ;;
    backup | serve | restore | menu) ;;
    *)
        say "unknown rd.usb4rescue=$mode (backup, serve, restore or menu): not running rescue"
        sleep 5
        exit 0
        ;;
esac

# --- drivers: the real USB4 stack; in the VM tests, the virtual USB4 host in its place
fabric=$(arg fabric)
has_vhost_hw() { # an ivshmem PCI device (1af4:1110), the virtual cable's medium
    for d in /sys/bus/pci/devices/*; do
        [ "$(cat "$d/vendor" 2> /dev/null)" = 0x1af4 ] &&
            [ "$(cat "$d/device" 2> /dev/null)" = 0x1110 ] && return 0
    done
    return 1
}
case "${fabric:-auto}" in
    virtual) virt=1 ;;
    usb4) virt=0 ;;
    *)
        virt=0
        if [ -d /sys/module/usb4vhost ] ||
            { has_vhost_hw && modprobe -n usb4vhost > /dev/null 2>&1; }; then
            virt=1
        fi
        ;;
esac
modprobe configfs > /dev/null 2>&1
if [ "$virt" = 1 ]; then
    # usb4vhost stands in for thunderbolt (same bus, same exported symbols; never both):
    # load it first, then the kernel's own thunderbolt_stream on top.
    modprobe usb4vhost || say "warning: cannot load usb4vhost (the virtual USB4 host)"
    modprobe thunderbolt_stream || say "warning: cannot load thunderbolt_stream"
else
    for m in thunderbolt thunderbolt_stream; do
        modprobe "$m" || say "warning: cannot load $m (rescue needs Linux >= 7.2 with CONFIG_USB4_STREAM)"
    done
fi
configfs_mounted() {
    while read -r _ mnt _; do
        [ "$mnt" = /sys/kernel/config ] && return 0
    done < /proc/mounts
    return 1
}
if ! configfs_mounted; then
    mount -t configfs configfs /sys/kernel/config ||
        say "warning: cannot mount ConfigFS on /sys/kernel/config"
fi
udevadm settle --timeout=10 > /dev/null 2>&1 || true

host=$(arg hostname)
[ -n "$host" ] && echo "$host" > /proc/sys/kernel/hostname

# --- the command line of rescue
set --
peer=$(arg peer)
wait=$(arg wait)
[ -n "$peer" ] && set -- "$@" --peer "$peer"
[ -n "$wait" ] && set -- "$@" --wait "$wait"
store_mnt=
case "$mode" in
    backup)
        label=$(arg label)
        set -- backup "$@"
        [ -n "$label" ] && set -- "$@" --label "$label"
        disks=$(arg disks)
        set -f
        oldifs=$IFS
        IFS=,
        # shellcheck disable=SC2086 # split the comma-separated list of disk names
        set -- "$@" $disks
        IFS=$oldifs
        set +f
        ;;
    restore)
        set -- restore "$@"
        b=$(arg backup)
        [ -n "$b" ] && set -- "$@" --backup "$b"
        [ -n "$host" ] && set -- "$@" --host "$host"
        flag yes && set -- "$@" --yes
        flag verify && set -- "$@" --verify
        maps=$(arg map)
        set -f
        oldifs=$IFS
        IFS=,
        for m in $maps; do
            [ -n "$m" ] && set -- "$@" --map "$m"
        done
        IFS=$oldifs
        set +f
        ;;
    serve)
        spec=$(arg store)
        if [ -z "$spec" ]; then
            say "serve needs rd.usb4rescue.store=LABEL=x|UUID=y|/dev/...: not running rescue"
            sleep 5
            exit 0
        fi
        store_mnt=/run/usb4rescue/store
        mkdir -p "$store_mnt"
        udevadm settle --timeout=30 > /dev/null 2>&1 || true
        if ! mount "$spec" "$store_mnt"; then
            say "cannot mount the store $spec on $store_mnt: not running rescue"
            sleep 5
            exit 0
        fi
        # --once: after one backup or restore session the boot goes on.
        # --create: the store is the filesystem just mounted there.
        set -- serve --store "$store_mnt" --create --once "$@"
        ;;
    menu)
        # The menu of the rescue initramfs, as a normal process (no mounts, no
        # module loading, no power actions): reads rescue.* options only.
        set -- init --no-mount
        ;;
esac

# Progress bars need a real terminal; serial consoles get plain lines.
case " $(cat /proc/cmdline) " in
    *" console=ttyS"* | *" console=ttyAMA"* | *" console=hvc"*) RESCUE_PLAIN=1 && export RESCUE_PLAIN ;;
esac

say "$mode started (rescue $*)"
rc=0
/usr/bin/rescue "$@" < /dev/console > /dev/console 2>&1 || rc=$?
say "$mode finished rc=$rc"
[ -n "$store_mnt" ] && { sync; umount "$store_mnt" || say "warning: cannot unmount $store_mnt"; }

if flag poweroff || flag reboot; then
    sync
    if flag poweroff; then
        say "powering off"
        poweroff -f || echo o > /proc/sysrq-trigger
    else
        say "rebooting"
        reboot -f || echo b > /proc/sysrq-trigger
    fi
    sleep 30
fi
if [ "$rc" != 0 ]; then
    say "rescue failed (rc=$rc, see above); the boot continues in 10 s"
    sleep 10
fi
say "continuing the boot"
exit 0
