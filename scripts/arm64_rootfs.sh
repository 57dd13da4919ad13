#!/usr/bin/env bash
# Prepare an aarch64 userland (Python, numpy, onnxruntime's aarch64 wheel) that runs on an x86-64 machine under
# QEMU user-mode emulation, to check ARM kernels without ARM hardware. No binfmt, no chroot, no root-only mounts:
#
#   scripts/arm64_rootfs.sh [ROOTFS]           (default: ~/.cache/resnet-edge/arm64-rootfs)
#   QEMU_CPU=neoverse-n1 ROOTFS/qemu-aarch64-static -L ROOTFS ROOTFS/usr/bin/python3 -c 'import onnxruntime'
#
# QEMU_CPU picks the emulated core: cortex-a72 (NEON only), neoverse-n1 (dot product), max (i8mm, SVE).
# Timing under emulation is not an ARM benchmark; outputs computed there are real ARM-kernel outputs.
#
# Needs: debootstrap and apt-get (Debian's), pip, and the Debian mirror the machine's apt sources name.
# It is idempotent: a rootfs whose python imports onnxruntime is left as it is. It builds in a staging folder and
# moves it into place only when it works, so an interrupted run leaves no half-built rootfs behind.
set -euo pipefail

rootfs=${1:-${XDG_CACHE_HOME:-$HOME/.cache}/resnet-edge/arm64-rootfs}
python_version=${ARM64_PYTHON_VERSION:-3.11}  # the suite's python3 (bookworm: 3.11); the wheels must match it
ort_version=${ARM64_ONNXRUNTIME:-onnxruntime}  # e.g. ARM64_ONNXRUNTIME=onnxruntime==1.23.2
qemu="$rootfs/qemu-aarch64-static"

say() { echo "arm64-rootfs: $*" >&2; }
die() { say "error: $*"; exit 1; }

check() {  # the rootfs is usable when its python imports numpy and onnxruntime under emulation
    [ -x "$qemu" ] && [ -x "$rootfs/usr/bin/python3" ] &&
        QEMU_CPU=max "$qemu" -L "$rootfs" "$rootfs/usr/bin/python3" -c 'import numpy, onnxruntime' 2>/dev/null
}

if check; then
    say "ready: $rootfs"
    exit 0
fi
[ ! -e "$rootfs" ] || die "$rootfs exists but its python cannot import numpy and onnxruntime; remove it to rebuild"

command -v debootstrap >/dev/null || die "debootstrap is missing: apt-get install debootstrap"
command -v dpkg-deb >/dev/null || die "dpkg-deb is missing (a Debian-based host is needed)"

# The suite and mirror the machine's own apt sources use: deb822 (.sources) first, then the one-line format.
suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
[ -n "$suite" ] || die "cannot tell the Debian suite from /etc/os-release"
mirror=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -n1 || true)
[ -n "$mirror" ] || mirror=$(grep -hs '^deb ' /etc/apt/sources.list | awk '{print $2}' | grep -v security | head -n1 || true)
[ -n "$mirror" ] || mirror=http://deb.debian.org/debian

final=$rootfs
mkdir -p "$(dirname "$final")"
rootfs=$(mktemp -d "$final.building.XXXXXX")
qemu="$rootfs/qemu-aarch64-static"
work=$(mktemp -d)
trap 'rm -rf "$work" "$rootfs"' EXIT

say "debootstrap (first stage) of $suite arm64 from $mirror"
# --foreign downloads and unpacks without running anything of the target's: no chroot, no binfmt.
debootstrap --arch=arm64 --foreign --variant=minbase --include=python3 "$suite" "$rootfs" "$mirror" \
    >"$work/debootstrap.log" 2>&1 || { tail -n 20 "$work/debootstrap.log" >&2; die "debootstrap failed"; }

say "unpacking the downloaded packages"
# The second stage would need the target's own dpkg under emulation; unpacking the archives is all python needs.
for deb in "$rootfs"/var/cache/apt/archives/*.deb; do
    dpkg-deb -x "$deb" "$rootfs"
done

say "qemu-aarch64-static from Debian's qemu-user-static"
(cd "$work" && apt-get download qemu-user-static >/dev/null 2>&1) || die "apt-get download qemu-user-static failed"
dpkg-deb -x "$work"/qemu-user-static_*.deb "$work/qemu"
install -m 0755 "$work/qemu/usr/bin/qemu-aarch64-static" "$qemu"

# onnxruntime reads /sys/devices/system/cpu/{possible,present} to size its thread pool; QEMU's -L serves the rootfs
# copy first, and without one the host's x86 files are read and onnxruntime segfaults on import (so it does with a
# "0" in them). Empty, they make its cpuinfo library give up ("Error in cpuinfo: failed to parse ..." on stderr), and
# onnxruntime then reads the ARM features (dot product, i8mm) from the auxiliary vector, which QEMU_CPU sets.
mkdir -p "$rootfs/sys/devices/system/cpu"
: >"$rootfs/sys/devices/system/cpu/possible"
: >"$rootfs/sys/devices/system/cpu/present"

say "numpy and $ort_version wheels for aarch64, python $python_version"
platform=(--only-binary=:all: --platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64
    --platform manylinux2014_aarch64 --python-version "$python_version" --implementation cp)
python3 -m pip download -q "${platform[@]}" -d "$work/wheels" numpy "$ort_version" ||
    die "pip download of the aarch64 wheels failed"
site="$rootfs/usr/local/lib/python$python_version/dist-packages"
# pip installs foreign-platform wheels only into a --target, told the platform again.
python3 -m pip install -q --no-index --no-deps --no-compile "${platform[@]}" --target "$site" "$work"/wheels/*.whl ||
    die "installing the wheels into $site failed"

check || die "the rootfs was built, but its python cannot import numpy and onnxruntime under emulation"
chmod 0755 "$rootfs"
mv -T "$rootfs" "$final"
say "ready: $final ($(du -sh "$final" | cut -f1))"
