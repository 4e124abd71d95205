# deps.sh: sourced by scripts/test.sh, scripts/demo.sh and scripts/build-deb.sh.
# ensure_deps [PACKAGE...] installs what the builds and tests need on a Debian host
# (the packages given, by default DEBIAN_PACKAGES) and says what is missing when it
# cannot.

DEBIAN_PACKAGES=(
    build-essential     # cc for crates that build C (xz2's liblzma)
    musl-tools          # musl-gcc for the static rescue binary
    file                # checks that rescue is statically linked
    qemu-system-x86     # the paired VMs
    qemu-utils          # qemu-img for disk images
    mmdebstrap          # the trixie build root for kmod/
    busybox-static      # the cable test initramfs
    cpio
    xz-utils
    e2fsprogs           # ext4 disks for the scenarios
    fdisk               # sfdisk for GPT and MBR test disks
    kmod                # depmod for the fetched kernels' modules (scripts/fetch-kernel.sh)
    gdisk               # sgdisk -v checks restored GPTs (rescue/tests/e2e.rs)
    dosfstools          # mkfs.vfat, and below the other mkfs tools that
    xfsprogs            #   rescue/tests/fixtures/mkfixtures.sh makes the
    btrfs-progs         #   filesystem fixtures of `rescue disks` with
    ntfs-3g
    exfatprogs
    cryptsetup-bin
    mtools              # fsmap's FAT tests fill and read images without a vfat driver
    lvm2                # pvcreate: fsmap's test that an LVM PV is copied whole
    time                # /usr/bin/time for peak RSS
    python3
    lintian             # checks the package of scripts/build-deb.sh
)

ensure_deps() {
    local missing=() p
    [ $# -gt 0 ] || set -- "${DEBIAN_PACKAGES[@]}"
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        if [ "$(id -u)" != 0 ]; then
            echo "missing Debian packages: ${missing[*]} (run as root, or: apt-get install ${missing[*]})" >&2
            return 1
        fi
        echo "installing: ${missing[*]}"
        # An install cut short earlier (a killed run, a lost power) leaves dpkg
        # half-done, and apt refuses everything until it is finished: finish it.
        if [ -n "$(dpkg --audit 2>/dev/null)" ]; then
            echo "dpkg has unfinished installs (an earlier install was interrupted): running dpkg --configure -a"
            DEBIAN_FRONTEND=noninteractive dpkg --configure -a >/dev/null ||
                { echo "dpkg --configure -a failed: finish the interrupted install by hand, then run this again" >&2; return 1; }
        fi
        # The lock timeout: the test lanes may install at the same time (apt
        # fails at once on a held lock by default).
        { apt-get -o DPkg::Lock::Timeout=600 update -qq && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${missing[@]}"; } >/dev/null ||
            { echo "apt-get could not install: ${missing[*]}" >&2; return 1; }
    fi
    if ! command -v cargo >/dev/null; then
        if [ -x "$HOME/.cargo/bin/cargo" ]; then
            export PATH="$HOME/.cargo/bin:$PATH"
        else
            echo "cargo not found: install Rust >= 1.88 with rustup (Debian 12's cargo is too old)" >&2
            return 1
        fi
    fi
    if command -v rustup >/dev/null; then
        rustup target list --installed | grep -q x86_64-unknown-linux-musl ||
            rustup target add x86_64-unknown-linux-musl ||
            { echo "rustup could not add the x86_64-unknown-linux-musl target" >&2; return 1; }
    fi
    return 0
}
