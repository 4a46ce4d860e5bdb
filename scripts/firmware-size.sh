#!/usr/bin/env bash
# Builds the ESP32-C3 firmware image in release mode and prints its flash and RAM use per
# section against the budget (fails above it), then the core's heap with 16 peers (a host test
# with a counting allocator, same core and configuration as the firmware; fails above 32 KiB in
# PSK mode; identity mode is printed too: 8 peers must fit in 56 KiB, 16 peers only below the
# regression bound of 112 KiB).
# Cargo runs inside node-esp/ so that it reads node-esp/.cargo/config.toml (target, linker script).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
. "$root/scripts/lib.sh"
cd "$root/node-esp"
rustup target add riscv32imc-unknown-none-elf >/dev/null 2>&1 || true
cargo build --release --locked
fw="$(cargo_target_dir .)/riscv32imc-unknown-none-elf/release/node-esp"
need_built "$fw"
python3 "$root/scripts/firmware-size.py" "$fw"
cd "$root"
if ! out=$(cargo test --quiet -p starling-device --test core_heap -- --nocapture 2>&1); then
    echo "$out"
    exit 1
fi
grep -o "[A-Za-z]* mode: core heap.*" <<<"$out"
