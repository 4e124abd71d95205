#!/usr/bin/env bash
# run-cable-tests.sh: the paired-VM test suites, from a fresh machine.
#
#   tests/vm/run-cable-tests.sh [SUITE]... [-k PATTERN]... [-q]
#
# SUITE: cable (test_cable.py: the real driver alone), vhost (test_vhost.py:
# usb4vhost under Debian's thunderbolt_stream.ko), robust (test_robust.py: reloads, PCI
# unbind, dead and restarted peers, three VMs, refusing thunderbolt, a fault soak, on
# usb4vhost + thunderbolt_stream). Default: all three, in that order.
#
# 1. scripts/fetch-kernel.sh      Debian trixie-backports kernel + modules (cached)
# 2. scripts/build-kmod.sh        usb4vhost.ko for that kernel (trixie build root)
# 3. cargo build -p cable-ctl     the host fault tool
# 4. tests/vm/build-initramfs.py  (cargo build -p image) busybox initramfs with configfs, virtio_blk, the real
#                                 thunderbolt + thunderbolt_stream, tbtest, and usb4vhost.ko
# 5. the suites' test runners     (QEMU, TCG unless USB4RESCUE_KVM=1 and KVM works)
#
# Exits non-zero on any failure; the last line is always "N passed, N failed". A failed
# build step counts as one failure and the tests that do not need it still run.
# Everything built goes under ${USB4RESCUE_CACHE:-/var/cache/usb4rescue} (never the repo).
# USB4RESCUE_KEEP=1 keeps VM logs of passing tests (failing tests always keep theirs and
# print the directory). USB4RESCUE_RELOADS (50) and USB4RESCUE_SOAK_S (25) size the
# robust suite's reload loop and soak.
set -uo pipefail
case "${1:-}" in -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;; esac

HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(cd "$HERE/../.." && pwd)
CACHE=${USB4RESCUE_CACHE:-/var/cache/usb4rescue}
export USB4RESCUE_CACHE=$CACHE
suites=()
while [ $# -gt 0 ]; do
    case "$1" in
        cable|vhost|robust) suites+=("$1"); shift ;;
        *) break ;;
    esac
done
[ ${#suites[@]} -gt 0 ] || suites=(cable vhost robust)

log() { printf 'run-cable-tests: %s\n' "$*" >&2; }
setup_failures=0
fail_step() { log "FAILED: $*"; setup_failures=$((setup_failures + 1)); }
finish() { # finish PASSED FAILED
    echo "$1 passed, $2 failed"
    [ "$2" -eq 0 ] && [ "$1" -gt 0 ]
    exit $?
}

need() { # need COMMAND PACKAGE
    command -v "$1" >/dev/null 2>&1 && return 0
    log "installing $2"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >&2 ||
        { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >&2; } ||
        { log "cannot install $2 (needed for $1)"; return 1; }
}
need qemu-system-x86_64 qemu-system-x86 || finish 0 1
need python3 python3 || finish 0 1
# A dynamic busybox names its ELF interpreter in its first page; the static one does not.
if [ ! -x /bin/busybox ] || head -c 4096 /bin/busybox | grep -qa 'ld-linux'; then
    log "installing busybox-static"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q busybox-static >&2 || finish 0 1
fi
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    { log "python3 >= 3.11 needed"; finish 0 1; }

t_start=$(date +%s)

# 1. kernel
KDIR=$("$TOP/scripts/fetch-kernel.sh" | tail -n1) && [ -f "$KDIR/vmlinuz" ] ||
    { log "scripts/fetch-kernel.sh failed: no kernel, nothing can run"; finish 0 1; }
KVER=$(basename "$KDIR")
log "kernel $KVER ($KDIR)"

# 2. usb4vhost.ko (the last line build-kmod.sh prints)
# build-kmod.sh builds in a fixed directory of the shared build root: serialise our
# calls, and try once more when a build from elsewhere pulled that directory away.
build_kmod() {
    mkdir -p "$CACHE/kmod"
    if command -v flock >/dev/null 2>&1; then
        flock -w 900 "$CACHE/kmod/.run-cable-tests.lock" "$TOP/scripts/build-kmod.sh"
    else
        "$TOP/scripts/build-kmod.sh"
    fi
}
KO=
if [ -x "$TOP/scripts/build-kmod.sh" ]; then
    KO=$(build_kmod | tail -n1)
    if [ -z "$KO" ] || [ ! -f "$KO" ]; then
        log "build-kmod.sh failed; trying once more in 5 s (a concurrent build can break it)"
        sleep 5
        KO=$(build_kmod | tail -n1)
    fi
    if [ -z "$KO" ] || [ ! -f "$KO" ]; then
        fail_step "scripts/build-kmod.sh did not produce usb4vhost.ko (see its output above)"
        KO=
    else
        log "module $KO"
    fi
else
    fail_step "scripts/build-kmod.sh missing"
fi

# 3. cable-ctl
CABLE_CTL=
if command -v cargo >/dev/null 2>&1 || [ -x "$HOME/.cargo/bin/cargo" ]; then
    CARGO=$(command -v cargo || echo "$HOME/.cargo/bin/cargo")
    if (cd "$TOP" && "$CARGO" build -q -p cable-ctl >&2); then
        tdir=$(cd "$TOP" && "$CARGO" metadata -q --format-version 1 --no-deps |
               python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
        CABLE_CTL=$tdir/debug/cable-ctl
        [ -x "$CABLE_CTL" ] || { fail_step "cargo built cable-ctl but $CABLE_CTL is missing"; CABLE_CTL=; }
    else
        fail_step "cargo build -p cable-ctl failed"
    fi
else
    fail_step "cargo not found (install Rust >= 1.88 with rustup; Debian 12's cargo is too old)"
fi
[ -n "$CABLE_CTL" ] && "$CABLE_CTL" --help >/dev/null 2>&1 || [ -z "$CABLE_CTL" ] ||
    log "warning: $CABLE_CTL --help fails"

# 4. initramfs, packed by the image tool; the suites read modules through it too
IMAGE=$(python3 -c 'import sys; sys.path.insert(0, sys.argv[1]); import vmpair; print(vmpair.image_tool())' \
        "$TOP/qemu" | tail -n1) && [ -x "$IMAGE" ] && export USB4RESCUE_IMAGE=$IMAGE ||
    { log "building the image tool failed"; finish 0 $((setup_failures + 1)); }
ko_args=()
[ -n "$KO" ] && ko_args=(--ko "$KO")
INITRD=$(python3 "$HERE/build-initramfs.py" --kernel-dir "$KDIR" "${ko_args[@]}" | tail -n1) &&
    [ -f "$INITRD" ] ||
    { log "tests/vm/build-initramfs.py failed"; finish 0 $((setup_failures + 1)); }
# The virtual host's suites take the same initramfs (USB4RESCUE_VM_VHOST_INITRD).
VHOST_INITRD=
[ -n "$KO" ] && VHOST_INITRD=$INITRD
log "initramfs $INITRD (usb4vhost: ${VHOST_INITRD:-none}); set-up took $(( $(date +%s) - t_start ))s"

# 5. tests
export USB4RESCUE_VM_KERNEL=$KDIR/vmlinuz USB4RESCUE_VM_INITRD=$INITRD
[ -n "$CABLE_CTL" ] && export USB4RESCUE_CABLE_CTL=$CABLE_CTL
[ -n "$VHOST_INITRD" ] && export USB4RESCUE_VM_VHOST_INITRD=$VHOST_INITRD
passed=0 failed=$setup_failures
# run_suite SCRIPT ARGS...: run one test runner, add its "N passed, N failed" line.
run_suite() {
    local out pid last
    out=$(mktemp /tmp/run-cable-tests.XXXXXX)
    python3 "$@" > "$out" &
    pid=$!
    trap 'kill -TERM $pid 2>/dev/null' INT TERM HUP
    wait $pid
    wait $pid 2>/dev/null   # again if a signal interrupted the first wait
    trap - INT TERM HUP
    python3 "$TOP/qemu/vmpair.py" cleanup >/dev/null 2>&1
    last=$(tail -n1 "$out")
    rm -f "$out"
    if [[ $last =~ ^([0-9]+)\ passed,\ ([0-9]+)\ failed$ ]]; then
        passed=$((passed + BASH_REMATCH[1]))
        failed=$((failed + BASH_REMATCH[2]))
    else
        log "$(basename "$1") ended without a result line"
        failed=$((failed + 1))
    fi
}
for suite in "${suites[@]}"; do
    case $suite in
        cable) run_suite "$HERE/test_cable.py" "$@" ;;
        # The virtual USB4 host's suites; -k patterns apply to every runner.
        *) if [ -n "$VHOST_INITRD" ]; then
               run_suite "$HERE/test_$suite.py" "$@"
           else
               log "no usb4vhost initramfs: suite $suite not run"
               failed=$((failed + 1))
           fi ;;
    esac
done
log "total wall time $(( $(date +%s) - t_start ))s"
finish "$passed" "$failed"
