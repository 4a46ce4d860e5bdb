#!/usr/bin/env bash
# Runs checks of the starling core and starling-device on an emulated RV32IMC core (the
# ESP32-C3's instruction set): qemu-system-riscv32 -machine virt. Installs QEMU if missing.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/../qemu-rv32"
if ! command -v qemu-system-riscv32 >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends qemu-system-misc >/dev/null
fi
cargo build --release --locked
kernel="$(cargo_target_dir .)/riscv32imc-unknown-none-elf/release/starling-qemu-rv32"
need_built "$kernel"
out=$(timeout 120 qemu-system-riscv32 -machine virt -nographic -bios none -m 64M -icount shift=0 -kernel "$kernel") || { echo "$out"; exit 1; }
echo "$out"
grep -q "all checks passed" <<<"$out"
