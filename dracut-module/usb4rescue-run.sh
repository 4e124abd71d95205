#!/bin/sh
# SPDX-License-Identifier: GPL-2.0-only
#
# usb4rescue-run: dracut's glue around `rescue init --dracut` (called by the
# pre-mount hook when the kernel command line has rd.usb4rescue). rescue reads
# rd.usb4rescue=MODE and every rd.usb4rescue.* option itself (the same as rescue.*
# of the rescue initramfs; see the README), loads the USB4STREAM stack, mounts
# ConfigFS, runs the mode on the console and returns, unless rd.usb4rescue.poweroff=1
# or rd.usb4rescue.reboot=1; the boot then continues.
#
# Console lines for people and tests: "usb4rescue: MODE started" and
# "usb4rescue: MODE finished rc=N" (from rescue), "usb4rescue: continuing the boot".

say() {
    echo "usb4rescue: $*" > /dev/console 2>&1 || echo "usb4rescue: $*" >&2
}

# The disks' drivers are udev's to load (honouring modprobe.d): let it finish first.
udevadm settle --timeout=30 > /dev/null 2>&1 || true
rc=0
/usr/bin/rescue init --dracut < /dev/console > /dev/console 2>&1 || rc=$?
if [ "$rc" != 0 ]; then
    say "rescue failed (rc=$rc, see above); the boot continues in 10 s"
    sleep 10
fi
say "continuing the boot"
exit 0
