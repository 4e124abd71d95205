#!/usr/bin/env bash
# test.sh: runs every test of usb4rescue on a fresh Debian machine (as root):
#
#   1. installs what is missing (Debian packages, the Rust musl target),
#   2. cargo fmt --check, no function over 100 lines (scripts/fnlen.py), no import
#      circle between rescue's modules (scripts/modgraph.py) and cargo clippy -D
#      warnings on the workspace,
#   3. cargo test --workspace (unit tests, fixture trees, host end-to-end over
#      UNIX sockets with cuts, bit flips, unreadable sectors, a full store),
#   4. the static build: rescue for x86_64-unknown-linux-musl must be statically
#      linked and run in an empty chroot,
#   5. the fuzzers (protocol decoders, serve's session handling) for a bounded time
#      in all (FUZZ_SECS, default 30, split between them),
#   6. the paired-VM virtual-cable tests (tests/vm/run-cable-tests.sh cable vhost:
#      Debian's own thunderbolt + thunderbolt_stream alone, then the virtual USB4
#      host usb4vhost under Debian's own thunderbolt_stream.ko),
#   7. their robustness tests (tests/vm/run-cable-tests.sh robust, on usb4vhost +
#      thunderbolt_stream: HopID and EBUSY errnos, O_NONBLOCK and poll, frames split
#      across reads, four streams, ring_size/throttling, a blocking open across a replug,
#      50 module reloads with data moving, PCI unbind, a fault soak of 25 s, a killed and
#      a restarted peer, three VMs, refusing to load beside thunderbolt),
#   8. the paired-VM rescue scenarios (tests/scenarios/run.sh),
#   9. packaging: the dracut module, the Debian package (scripts/build-deb.sh, installed
#      and removed in the trixie root) and the mkosi-built USB image, booted in QEMU
#      (tests/packaging/run.sh).
#
# USB4RESCUE_SKIP_VM=1 skips 6 to 9 (no QEMU); USB4RESCUE_SKIP_FUZZ=1 skips 5.
# 8 and 9 run beside 4, 6 and 7 (two lanes), and 5 after 7 in the first lane;
# USB4RESCUE_VM_LANES=1 runs all in turn.
# Downloads and builds are cached in ${USB4RESCUE_CACHE:-/var/cache/usb4rescue},
# cargo's target directory included (CARGO_TARGET_DIR), so a rerun builds little.
# The last line is "N passed, N failed" counting the groups above; the exit status
# is non-zero when any group failed.
set -uo pipefail
cd "$(dirname "$0")/.."
TOP=$PWD
export USB4RESCUE_CACHE=${USB4RESCUE_CACHE:-/var/cache/usb4rescue}
export CARGO_TERM_COLOR=never
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$USB4RESCUE_CACHE/target}
. scripts/deps.sh

passed=0
failed=0
failures=()
# Every group's output also goes to a log of its own, so that the summary at the end can
# repeat what failed: a CI log is often read from its tail, and the first lane's
# failures are printed long before the second lane's output.
logs=$(mktemp -d)
log_of() { printf '%s/%s.log' "$logs" "$(printf '%s' "$1" | tr -c 'A-Za-z0-9' _)"; }
logged() { # logged LOG COMMAND...: COMMAND's output to stdout and to LOG; COMMAND's status
    local log=$1 rc
    shift
    "$@" > >(tee "$log") 2>&1
    rc=$?
    # tee ends once COMMAND's output is all copied: wait for it (5 s at most, in case
    # something COMMAND left behind still holds the pipe) so the group's last lines
    # come before its "=== ... ok" line.
    local tee_pid=$! i
    for i in $(seq 50); do kill -0 "$tee_pid" 2>/dev/null || break; sleep 0.1; done
    return $rc
}
# what_failed NAME: the lines of NAME's log that say what failed (40 at most).
what_failed() {
    local log
    log=$(log_of "$1")
    echo "--- $1: what failed (the whole output is above, after '=== $1')"
    [ -f "$log" ] || { echo "    (no log)"; return; }
    grep -aE '^(FAIL|ERROR)[: ]|AssertionError|^[A-Za-z]+Error: |panicked at|^error(\[|:)|^test .* FAILED$|FAILED: |^failures:$|^    [a-z_:0-9]+$' "$log" |
        grep -av '^=== ' | head -n 40 | sed 's/^/    /'
}
group() { # group NAME COMMAND...
    local name=$1 t0=$SECONDS
    shift
    echo "=== $name"
    if logged "$(log_of "$name")" "$@"; then
        passed=$((passed + 1))
        echo "=== $name: ok ($((SECONDS - t0))s)"
    else
        failed=$((failed + 1))
        failures+=("$name")
        echo "=== $name: FAILED ($((SECONDS - t0))s)"
    fi
}

static_build() {
    cargo build --release --locked --target x86_64-unknown-linux-musl -p rescue || return 1
    local bin=$CARGO_TARGET_DIR/x86_64-unknown-linux-musl/release/rescue
    file "$bin"
    file "$bin" | grep -Eq 'statically linked|static-pie linked' || { echo "rescue is not static"; return 1; }
    local empty
    empty=$(mktemp -d)
    cp "$bin" "$empty/rescue"
    chroot "$empty" /rescue --version
    local rc=$?
    rm -rf "$empty"
    return $rc
}

fuzz() { # fuzz [PREFIX...]: e.g. nice -n 10
    "$@" rescue/fuzz/run.sh "${FUZZ_SECS:-30}"
}

lint() {
    # fnlen: no function over 100 lines outside tests (raw lines, `fn` to its brace);
    # modgraph: no import circle between rescue's top-level modules. Each lists
    # every offender, and clippy runs even so.
    local rc=0
    cargo fmt --all -- --check || rc=1
    scripts/fnlen.py || rc=1
    scripts/modgraph.py || rc=1
    cargo clippy --locked --workspace --all-targets -- -D warnings || rc=1
    return $rc
}

vm_scenarios() {
    if [ ! -x tests/scenarios/run.sh ]; then
        echo "tests/scenarios/run.sh is missing"
        return 1
    fi
    tests/scenarios/run.sh
}

t_start=$SECONDS
group "dependencies" ensure_deps
group "format and lint" lint
group "cargo test" cargo test --locked --workspace
fuzz_group() {
    [ "${USB4RESCUE_SKIP_FUZZ:-0}" = 1 ] || group "fuzz ${FUZZ_SECS:-30}s" fuzz "$@"
}
two_lanes=0
[ "${USB4RESCUE_SKIP_VM:-0}" != 1 ] && [ "${USB4RESCUE_VM_LANES:-2}" != 1 ] && two_lanes=1
if [ $two_lanes != 1 ]; then
    group "static build" static_build
    fuzz_group
fi
if [ "${USB4RESCUE_SKIP_VM:-0}" != 1 ]; then
    if [ "${USB4RESCUE_VM_LANES:-2}" = 1 ]; then
        group "VM: virtual cable" tests/vm/run-cable-tests.sh cable vhost
        group "VM: virtual cable robustness" tests/vm/run-cable-tests.sh robust
        group "VM: rescue scenarios" vm_scenarios
        group "VM: packaging (dracut, USB image)" tests/packaging/run.sh
    else
        # Two lanes of VM groups side by side: a TCG guest leaves a core idle whenever it
        # boots alone or waits on its peer, so the second lane mostly fills idle time. The
        # shared steps (kernel fetch, build root, kmod build) take locks. The second lane's
        # output is printed, whole, when both are done.
        lane2=$(mktemp -d)
        (
            exec >"$lane2/out" 2>&1
            lane_group() { # lane_group NAME COMMAND...
                local name=$1 t0=$SECONDS
                shift
                echo "=== $name"
                if logged "$(log_of "$name")" "$@"; then r=ok; else r=FAILED; fi
                echo "=== $name: $r ($((SECONDS - t0))s)"
                echo "$r $name" >>"$lane2/results"
            }
            lane_group "VM: rescue scenarios" vm_scenarios
            lane_group "VM: packaging (dracut, USB image)" tests/packaging/run.sh
        ) &
        lane2_pid=$!
        # The second lane builds the static rescue first thing (cargo's lock makes one of
        # the two builds wait for the other, which then finds it built): checking it here
        # keeps it off the critical path.
        group "static build" static_build
        group "VM: virtual cable" tests/vm/run-cable-tests.sh cable vhost
        group "VM: virtual cable robustness" tests/vm/run-cable-tests.sh robust
        # The first lane ends minutes before the second (scenarios + packaging, the
        # critical path): the fuzzers run there, niced so the second lane's VMs keep
        # the CPU they need, instead of before both lanes.
        fuzz_group nice -n 10
        wait "$lane2_pid"
        echo "=== (the second lane, run alongside:)"
        cat "$lane2/out"
        while read -r r name; do
            if [ "$r" = ok ]; then
                passed=$((passed + 1))
            else
                failed=$((failed + 1))
                failures+=("$name")
            fi
        done <"$lane2/results"
        [ -s "$lane2/results" ] || { failed=$((failed + 1)); failures+=("VM: second lane (no result)"); }
        rm -rf "$lane2"
    fi
fi
echo
echo "test.sh: $((SECONDS - t_start))s in all"
for f in "${failures[@]}"; do what_failed "$f"; done
rm -rf "$logs"
for f in "${failures[@]}"; do echo "FAILED: $f"; done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
