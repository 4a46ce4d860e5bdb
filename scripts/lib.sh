# Shared by the scripts (source it): where cargo puts the build outputs of the workspace in DIR,
# as cargo itself reports it, so that CARGO_TARGET_DIR and `build.target-dir` are followed.
cargo_target_dir() {
    (cd "$1" && cargo metadata --format-version 1 --no-deps) | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])'
}

# need_built FILE: stops at once, saying what is missing, when a build left no FILE.
need_built() {
    [ -e "$1" ] || { echo "$(basename "$0"): $1 is missing after the build (CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-unset})" >&2; exit 1; }
}
