#!/bin/sh
# SPDX-License-Identifier: GPL-2.0-only
#
# dracut pre-mount hook of the usb4rescue module (sourced by dracut: no exit here).
# Does nothing unless the kernel command line has rd.usb4rescue=MODE (or a bare
# rd.usb4rescue, which means menu); then runs usb4rescue-run, which runs rescue on
# the console and returns when it is done, and the boot continues. rescue reads
# rd.usb4rescue.* itself (the same options as rescue.* of the rescue initramfs).
#
# Why pre-mount: udev has settled (disks and the Thunderbolt bus are there, modules
# autoload), and the root filesystem is not mounted yet, so a backup reads a quiet
# disk and a restore may overwrite it.

if getarg rd.usb4rescue > /dev/null || [ -n "$(getarg rd.usb4rescue=)" ]; then
    /usr/bin/usb4rescue-run
fi
