#!/usr/bin/env bash
# Builds the ESP32-C3 firmware image in release mode and prints its flash and RAM use per
# section against the budget (fails above it). Cargo must run inside node-esp/ so it reads
# node-esp/.cargo/config.toml (target, linker script).
set -euo pipefail
cd "$(dirname "$0")/../node-esp"
rustup target add riscv32imc-unknown-none-elf >/dev/null 2>&1 || true
cargo build --release --locked
python3 ../scripts/firmware-size.py target/riscv32imc-unknown-none-elf/release/node-esp
