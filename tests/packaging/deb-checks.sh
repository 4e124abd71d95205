#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-only
#
# deb-checks.sh DEB KVER: run by tests/packaging/run.sh inside a throwaway overlay of
# the packaging root (in_pkgroot_overlay), as a sysadmin would use the package:
# install it with apt, run `rescue --version`, read every man page with `man -l`,
# let bash-completion load the completion and complete a word, build a dracut
# initramfs with --add usb4rescue, and purge the package. Prints "OK name: detail"
# or "NOTOK name: why" per check; run.sh counts them and then checks, from outside,
# that the purge left no file behind.
set -uo pipefail
DEB=$1
KVER=$2
ok() { echo "OK $1: $2"; }
notok() { echo "NOTOK $1: $2"; }
# report NAME DETAIL [PROBLEM...]: OK with DETAIL when no problem is given.
report() {
    local name=$1 detail=$2
    shift 2
    if [ $# -eq 0 ]; then ok "$name" "$detail"; else notok "$name" "$*"; fi
}

# The packaging root has a `make install`ed rescue in /usr/local/sbin (run.sh's
# dracut-install), which the dracut module would prefer: hide it (in the overlay only),
# so that what is checked is the package's.
rm -f /usr/local/sbin/rescue

# The README's command.
if apt install -y -q "$DEB" > /tmp/apt-install.log 2>&1 &&
    dpkg-query -W -f='${Status}' usb4rescue | grep -q 'install ok installed'; then
    ok deb-install "apt install $(basename "$DEB")"
else
    notok deb-install "apt install failed: $(tail -n 5 /tmp/apt-install.log)"
    exit 0
fi
dpkg -L usb4rescue > /tmp/files

version=$(dpkg-query -W -f='${Version}' usb4rescue)
got=$(rescue --version 2>&1)
if [ "$(command -v rescue)" = /usr/sbin/rescue ] &&
    [[ $got =~ ^rescue\ $version\ \(commit\ [0-9a-f]{7,}\)$ ]]; then
    ok deb-version "$got"
else
    notok deb-version "\`rescue --version\` from $(command -v rescue) said '$got' (package version $version)"
fi

pages=0
bad=()
for page in $(grep '^/usr/share/man/man8/.*\.8\.gz$' /tmp/files); do
    pages=$((pages + 1))
    name=$(basename "$page" .8.gz)
    # Rendered without a single groff warning, titled with its own name.
    out=$(MANWIDTH=80 man -l "$page" 2> /tmp/man.err)
    [ ! -s /tmp/man.err ] && grep -q "^NAME" <<< "$out" && grep -Eq "^ *$name +- " <<< "$out" ||
        bad+=("$name ($(head -c 200 /tmp/man.err))")
done
[ "$pages" -ge 10 ] || bad+=("only $pages pages")
report deb-man "man -l: $pages pages (rescue.8 and one per subcommand)" "${bad[@]}"

# bash-completion's own loader finds the file by the command's name; the function
# then completes "rescue ba" to "backup" and "rescue serve --all" to "--allow-restore".
comp=$(bash -c '. /usr/share/bash-completion/bash_completion
    __load_completion rescue || exit 1
    complete -p rescue
    fn=$(complete -p rescue | sed -n "s/.* -F \([^ ]*\) .*/\1/p")
    COMP_WORDS=(rescue ba); COMP_CWORD=1; COMP_LINE="rescue ba"; COMP_POINT=9
    "$fn" rescue ba rescue; echo "words: ${COMPREPLY[*]}"
    COMP_WORDS=(rescue serve --allow-r); COMP_CWORD=2
    "$fn" rescue --allow-r serve; echo "words: ${COMPREPLY[*]}"' 2>&1)
if grep -q -- '-F _rescue rescue$' <<< "$comp" && grep -qx 'words: backup' <<< "$comp" &&
    grep -qx 'words: --allow-restore' <<< "$comp"; then
    ok deb-bash-completion "loaded by bash-completion; rescue ba<TAB> -> backup, serve --allow-r<TAB> -> --allow-restore"
else
    notok deb-bash-completion "$comp"
fi
for f in /usr/share/zsh/vendor-completions/_rescue /usr/share/fish/vendor_completions.d/rescue.fish; do
    grep -qx "$f" /tmp/files && [ -s "$f" ] || notok deb-completions "$f missing"
done

# The packaged module with the packaged binary: only it and dracut's base (-m base), no
# compression (--no-compress): a few seconds.
if dracut -q --force --no-hostonly --no-compress -m base --add usb4rescue /tmp/deb-initrd.img "$KVER" > /tmp/dracut.log 2>&1 &&
    lsinitrd /tmp/deb-initrd.img > /tmp/lsinitrd.txt 2>&1; then
    missing=()
    for want in "^usb4rescue\$" " usr/bin/rescue\$" "hooks/pre-mount/[0-9]*-usb4rescue-pre-mount.sh\$" \
        "/thunderbolt/thunderbolt_stream.ko"; do
        grep -q -- "$want" /tmp/lsinitrd.txt || missing+=("$want")
    done
    same=$(lsinitrd /tmp/deb-initrd.img -f usr/bin/rescue | cmp -s - /usr/sbin/rescue && echo yes)
    [ "$same" = yes ] || missing+=("usr/bin/rescue equal to /usr/sbin/rescue")
    report deb-dracut "dracut --add usb4rescue: $(($(stat -c %s /tmp/deb-initrd.img) >> 20)) MiB, the package's rescue and hook in it" \
        "${missing[@]/#/not in the initramfs: }"
else
    notok deb-dracut "dracut failed: $(tail -n 10 /tmp/dracut.log)"
fi

if apt-get purge -y -q usb4rescue > /tmp/apt-purge.log 2>&1; then
    left=()
    while read -r f; do
        [ -e "$f" ] && [ ! -d "$f" ] && left+=("$f")
        # The package's own directories go with it (the shared ones stay).
        case "$f" in
            */90usb4rescue | */doc/usb4rescue) [ -e "$f" ] && left+=("$f") ;;
        esac
    done < /tmp/files
    dpkg-query -W -f='${Status}' usb4rescue 2> /dev/null | grep -q 'install ok installed' &&
        left+=("(dpkg still lists usb4rescue as installed)")
    report deb-remove "apt-get purge: none of its $(wc -l < /tmp/files) paths left" "${left[@]/#/left behind: }"
else
    notok deb-remove "apt-get purge failed: $(tail -n 5 /tmp/apt-purge.log)"
fi
