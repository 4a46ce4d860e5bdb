#!/usr/bin/env bash
# Builds the emulated ESP32-C3 (QEMU, lcgamboa/qemu fork) from the source archive in
# ../shared/emulator with its esp-hal patch and this project's qemu-starling.patch, for
# scripts/firmware-emu.sh. Prints the path of the binary on its last line.
#
# Usage: build.sh EMULATOR_DIR CACHE_DIR. The build is cached in CACHE_DIR under a hash of the
# archive and both patches, so it runs once per change (about 20 min on 2 cores; only the
# riscv32 target is built). Installs its build packages itself.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
emu="$1"
cache="$2"
src_archive="$emu/qemu-lcgamboa-picsimlab-esp32-98f1cbda.tar.xz"
keycodes="$emu/keycodemapdb-f5772a62.tar.xz"
patches=("$emu/qemu-picsimlab-esp-hal.patch" "$here/qemu-starling.patch")
key=$(cat "$src_archive" "$keycodes" "${patches[@]}" | sha256sum | cut -c1-16)
out="$cache/qemu-$key"
if [ -x "$out/qemu-system-riscv32" ]; then
    echo "emulator: cached build $out" >&2
    echo "$out/qemu-system-riscv32"
    exit 0
fi
pkgs=(ninja-build meson pkg-config libglib2.0-dev libpixman-1-dev libslirp-dev libgcrypt20-dev libfdt-dev flex bison
      python3-venv gcc make)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    echo "emulator: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 && apt-get install -y -qq "${missing[@]}" >/dev/null
fi
start=$(date +%s)
rm -rf "$out.tmp" && mkdir -p "$out.tmp"
cd "$out.tmp"
tar xf "$src_archive"
cd qemu-*/
mkdir -p subprojects/keycodemapdb && tar xf "$keycodes" -C subprojects/keycodemapdb --strip-components=1
for p in "${patches[@]}"; do patch -s -p1 <"$p"; done
mkdir build && cd build
../configure --target-list=riscv32-softmmu --disable-download --enable-slirp \
    --enable-gcrypt --enable-fdt=system --disable-werror --disable-docs --disable-tools --disable-guest-agent \
    --disable-gtk --disable-sdl --disable-vnc --disable-opengl --disable-virglrenderer --disable-capstone \
    >../../configure.log 2>&1 || { tail -n 30 ../../configure.log >&2; exit 1; }
make -j"$(nproc)" qemu-system-riscv32 >../../make.log 2>&1 || { tail -n 30 ../../make.log >&2; exit 1; }
strip qemu-system-riscv32
mkdir -p "$out"
cp qemu-system-riscv32 "$out/"
cd "$cache"
rm -rf "$out.tmp"
echo "emulator: built $out in $(($(date +%s) - start)) s" >&2
echo "$out/qemu-system-riscv32"
