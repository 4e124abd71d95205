# Helpers sourced before every host command in the test VM (see init).

CFS=/sys/kernel/config/thunderbolt/stream
TBDEV=/sys/bus/thunderbolt/devices

# bg NAME CMD...: run CMD in the background; output in /tmp/bg.NAME.out, exit code
# in /tmp/bg.NAME.rc once it ends.
bg() {
    _n=$1; shift
    rm -f "/tmp/bg.$_n.rc" "/tmp/bg.$_n.out"
    ( "$@" > "/tmp/bg.$_n.out" 2>&1; echo $? > "/tmp/bg.$_n.rc.tmp"; mv "/tmp/bg.$_n.rc.tmp" "/tmp/bg.$_n.rc" ) </dev/null >/dev/null 2>&1 &
    echo $! > "/tmp/bg.$_n.pid"
}

# bgwait NAME [TIMEOUT_S]: wait for a bg job, print its output, return its exit code
# (124 on timeout: the job keeps running).
bgwait() {
    _n=$1 _t=${2:-60} _i=0
    while [ ! -f "/tmp/bg.$_n.rc" ]; do
        [ "$_i" -ge $((_t * 10)) ] && { echo "bgwait: $_n still running after ${_t}s"; return 124; }
        usleep 100000; _i=$((_i + 1))
    done
    cat "/tmp/bg.$_n.out"
    return "$(cat "/tmp/bg.$_n.rc")"
}

# bgkill NAME: stop a bg job and every process under it. All descendants, not only
# children: in `sh -c '{ dd ...; sleep 120; } > /dev/tbstream0'` the sleep holds the
# stream open, and outliving its sh it kept thunderbolt_stream busy past the reset's wait.
bgkill() {
    [ -f "/tmp/bg.$1.pid" ] || return 0
    _p=$(cat "/tmp/bg.$1.pid")
    # Listed before any dies (an orphan's parent becomes 1); fields 1 and 4 are the pid and
    # the parent's (our commands' names have no spaces).
    _d=$(cat /proc/[0-9]*/stat 2>/dev/null | awk -v p="$_p" '{ up[$1] = $4 }
        END { q[n = 1] = p; for (i = 1; i <= n; i++) for (c in up) if (up[c] == q[i]) { q[++n] = c; print c } }')
    kill "$_p" $_d 2>/dev/null
    return 0
}

# wr FILE VALUE: write VALUE to FILE; print "ok" or the error text (exit code 1).
wr() {
    if _e=$( { echo "$2" > "$1"; } 2>&1 ); then echo ok; else echo "ERR ${_e##*: }"; return 1; fi
}

# mk DIR: mkdir, print "ok" or the error text.
mk() {
    if _e=$(mkdir "$1" 2>&1); then echo ok; else echo "ERR ${_e##*: }"; return 1; fi
}

# waitfor TIMEOUT_S TEST...: retry `TEST...` every 0.1 s until it succeeds.
waitfor() {
    _t=$1 _i=0; shift
    until "$@" >/dev/null 2>&1; do
        [ "$_i" -ge $((_t * 10)) ] && { echo "waitfor: timed out after ${_t}s: $*"; return 124; }
        usleep 100000; _i=$((_i + 1))
    done
}

# badlog: print kernel log lines that mean a kernel bug (empty when clean).
badlog() {
    dmesg | grep -E 'Oops|BUG:|WARNING:|Call Trace|general protection|Kernel panic|list_del corruption|UBSAN|KASAN' || true
}

# svc: name of the first thunderbolt service with key "stream" (e.g. 0-1.0).
svc() {
    for _d in "$TBDEV"/*.*; do
        [ "$(cat "$_d/key" 2>/dev/null)" = stream ] && { basename "$_d"; return 0; }
    done
    return 1
}

# linkwait TIMEOUT_S: wait until a stream service is present; print its name.
linkwait() {
    waitfor "${1:-30}" svc || return 124
    svc
}

# mkstream CONN NAME [IN OUT]: make the connection (if missing) and stream groups,
# write HopIDs if given; print "index in out".
mkstream() {
    [ -d "$CFS/$1" ] || mkdir "$CFS/$1" || return 1
    mkdir "$CFS/$1/$2" || return 1
    if [ $# -ge 4 ]; then
        echo "$3" > "$CFS/$1/$2/in_hopid" || return 1
        echo "$4" > "$CFS/$1/$2/out_hopid" || return 1
    fi
    streaminfo "$1" "$2"
}

# streaminfo CONN NAME: print "index in_hopid out_hopid".
streaminfo() {
    echo "$(cat "$CFS/$1/$2/index") $(cat "$CFS/$1/$2/in_hopid") $(cat "$CFS/$1/$2/out_hopid")"
}

# rmstreams: remove every stream and connection group.
rmstreams() {
    for _g in "$CFS"/*/*/; do [ -d "$_g" ] && rmdir "$_g"; done
    for _g in "$CFS"/*/; do [ -d "$_g" ] && rmdir "$_g"; done
    ! ls "$CFS"/*/ >/dev/null 2>&1
}

# waitopen DEV TIMEOUT_S: wait until some process has DEV (e.g. /dev/tbstream0) open.
waitopen() {
    waitfor "${2:-10}" sh -c "ls -l /proc/[0-9]*/fd/ 2>/dev/null | grep -q ' $1\$'"
}

# now: seconds since boot with centiseconds.
now() { cut -d' ' -f1 /proc/uptime; }

# killbg: stop every bg job.
killbg() {
    for _f in /tmp/bg.*.pid; do [ -f "$_f" ] || continue; _n=${_f#/tmp/bg.}; bgkill "${_n%.pid}"; rm -f "$_f"; done
}
