#!/usr/bin/env bash
# Runs every check and test of the workspace on a fresh machine. Installs what it needs itself.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "toolchain pieces"
rustup component add rustfmt clippy >/dev/null 2>&1 || true
rustup target add riscv32imc-unknown-none-elf

step "mosquitto, its clients and openssl, for the gateway's tests against a real broker (TLS too); tmux for watch's; nftables and iproute2 for the loss test in a network namespace"
if ! command -v mosquitto >/dev/null 2>&1 || ! command -v mosquitto_sub >/dev/null 2>&1 \
    || ! command -v openssl >/dev/null 2>&1 || ! command -v tmux >/dev/null 2>&1 \
    || ! command -v nft >/dev/null 2>&1 || ! command -v ip >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq mosquitto mosquitto-clients openssl tmux nftables iproute2 >/dev/null
fi
{ mosquitto -h 2>&1 || true; } | head -n 1
tmux -V

step "format"
cargo fmt --all -- --check

step "clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets -- -D warnings

step "the protocol core builds no_std for the ESP32-C3 target"
cargo build -p starling --no-default-features --target riscv32imc-unknown-none-elf
cargo build -p starling --no-default-features --target riscv32imc-unknown-none-elf --release

step "the ESP32-C3 firmware (node-esp/) builds; its flash and RAM use per section and the core's heap against the budget"
bash scripts/firmware-size.sh
(cd node-esp && cargo fmt -- --check && cargo clippy --release --locked -- -D warnings)

step "the core and device logic on an emulated RV32IMC core (qemu-system-riscv32 -machine virt)"
bash scripts/qemu-rv32.sh
(cd qemu-rv32 && cargo fmt -- --check && cargo clippy --release --locked -- -D warnings)

step "the real firmware image on an emulated ESP32-C3 with Wi-Fi, meshing with host nodes (builds the emulator once, needs root for its network namespace)"
bash scripts/firmware-emu.sh

step "docs build without warnings"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet

step "tests"
cargo test --workspace

step "starling watch (--plain and full-screen) under 50 000 messages per second (optimized build; prints rate, memory, key latency)"
cargo test --release -p starling-gateway --test watch_load -- --ignored --nocapture
step "fuzzing: every target of fuzz/ for ${STARLING_FUZZ_SECONDS:-30}s (nightly; installs cargo-fuzz if missing)"
bash scripts/fuzz.sh "${STARLING_FUZZ_SECONDS:-30}"
