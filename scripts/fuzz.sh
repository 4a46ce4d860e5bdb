#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ for SECONDS each (default 60), one after another, starting from
# the committed seed corpus and the inputs under fuzz/regressions/<target>/. Fails if any target
# finds a crash, a failed invariant, a leak, a timeout or runs out of memory; the input is left in
# fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]      e.g. scripts/fuzz.sh 10 node_psk_sealed
#
# Needs only a nightly rustc (cargo-fuzz builds with -Zsanitizer=address); installs nightly
# (minimal profile) and cargo-fuzz when they are missing. New inputs the fuzzer finds go to a
# scratch directory, so the committed corpus stays as generated (see fuzz/README.md).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${1:-60}"
shift || true

if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    # gen-corpus is the seed generator, a plain binary of the same package, not a target.
    mapfile -t targets < <(cargo +nightly fuzz list | grep -vx gen-corpus)
fi

# Single-datagram decoders need no more than a datagram (and a bit, to see oversize refused);
# the node targets read programs of many frames.
max_len() {
    case "$1" in
        node_*) echo 8192 ;;
        *) echo 1500 ;;
    esac
}

cargo +nightly fuzz build -O

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
failed=()
for t in "${targets[@]}"; do
    printf '\n==> fuzz %s for %ss\n' "$t" "$seconds"
    mkdir -p "$scratch/$t" "corpus/$t"
    # Inputs that once crashed are loaded (and so re-run) first of all.
    dirs=("$scratch/$t" "corpus/$t")
    if [ -d "regressions/$t" ]; then
        dirs+=("regressions/$t")
    fi
    log="$scratch/$t.log"
    if cargo +nightly fuzz run -O "$t" "${dirs[@]}" -- \
        -max_total_time="$seconds" -max_len="$(max_len "$t")" -rss_limit_mb=2048 -timeout=20 \
        -print_final_stats=1 >"$log" 2>&1; then
        grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1 || true
    else
        tail -n 60 "$log"
        failed+=("$t")
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    printf '\nfuzzing found problems in: %s (inputs under fuzz/artifacts/)\n' "${failed[*]}" >&2
    exit 1
fi
printf '\nall %d fuzz targets ran %ss without finding anything\n' "${#targets[@]}" "$seconds"
