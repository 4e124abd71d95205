#!/bin/busybox sh
# PID 1 of the usb4vcable ad-hoc test initramfs (kmod/tests/vcpair.py).
# Kernel command line: vc.name=HOST, vc.noload=1 (do not insmod usb4vcable),
# usb4vcable.<param>=<value> (passed to insmod).
# Command loop on ttyS1:  host -> "@@X <id> <base64 script>"
#                         guest -> "@@B <id>", output, "@@E <id> <rc>"
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mkdir -p /proc /sys /dev /tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
name=vm noload= params=
for w in $(cat /proc/cmdline); do
	case "$w" in
	vc.name=*) name=${w#vc.name=} ;;
	vc.noload=*) noload=1 ;;
	usb4vcable.*) params="$params ${w#usb4vcable.}" ;;
	esac
done
hostname "$name"
insmod /lib/modules/configfs.ko
mount -t configfs none /sys/kernel/config
if [ -z "$noload" ]; then
	# shellcheck disable=SC2086
	insmod /lib/modules/usb4vcable.ko $params && echo "@@MOD ok" || echo "@@MOD FAILED"
fi
# The command loop runs in a child: orphaned background jobs of commands are
# reparented to PID 1, and their SIGCHLD would interrupt a read() in the middle of a
# command line. The loop keeps ttyS1 open for good (a last close resets its termios).
cmdloop() {
	exec 3<>/dev/ttyS1
	stty raw -echo <&3 2>/dev/null
	# Only now: bytes that reach a serial port nobody has open are lost.
	echo "@@READY $name"
	while :; do
		if ! read -r tag id b64 <&3; then
			usleep 100000
			continue
		fi
		[ "$tag" = "@@X" ] || continue
		echo "$b64" | base64 -d > /tmp/cmd.sh
		{
			echo "@@B $id"
			sh /tmp/cmd.sh </dev/null 2>&1 3>&-
			echo "@@E $id $?"
		} >&3
	done
}
cmdloop &
trap '' CHLD
while :; do
	wait
	sleep 1
done
