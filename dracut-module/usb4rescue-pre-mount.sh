#!/bin/sh
# SPDX-License-Identifier: GPL-2.0-only
#
# dracut pre-mount hook of the usb4rescue module (sourced by dracut: no exit here).
# Does nothing unless the kernel command line has rd.usb4rescue=MODE (or a bare
# rd.usb4rescue, which means menu); then runs usb4rescue-run, which runs rescue on
# the console and returns when it is done, and the boot continues.
#
#   rd.usb4rescue=backup|serve|restore|menu   what to do (bare rd.usb4rescue: menu)
#   rd.usb4rescue.disks=sda,nvme0n1   rd.usb4rescue.label=NAME   rd.usb4rescue.peer=0-1.0
#   rd.usb4rescue.store=LABEL=x|UUID=y|/dev/...   rd.usb4rescue.yes=1   rd.usb4rescue.verify=1
#   rd.usb4rescue.map=NAME=TARGET,...   rd.usb4rescue.backup=ID   rd.usb4rescue.hostname=NAME
#   rd.usb4rescue.fabric=auto|usb4|virtual   rd.usb4rescue.wait=SECS
#   rd.usb4rescue.poweroff=1   rd.usb4rescue.reboot=1
# (the same as rescue.* of the rescue initramfs; see usb4rescue-run for details)
#
# Why pre-mount: udev has settled (disks and the Thunderbolt bus are there, modules
# autoload), and the root filesystem is not mounted yet, so a backup reads a quiet
# disk and a restore may overwrite it.

if getarg rd.usb4rescue > /dev/null || [ -n "$(getarg rd.usb4rescue=)" ]; then
    /usr/bin/usb4rescue-run
fi
