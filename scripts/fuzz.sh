#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for SECONDS each and fails if any target finds a crash
# (a panic, a failed invariant, a sanitizer report, an input slower than 10 s or a memory
# blow-up). Usage: scripts/fuzz.sh [SECONDS]; default $TESSERA_FUZZ_SECONDS, else 5.
#
# cargo fuzz needs rustc's -Z flags (-Zsanitizer=address). The machine's only toolchain is
# stable, which accepts them with RUSTC_BOOTSTRAP=1 (see fuzz/README.md). Each target runs
# on a scratch corpus (kept in the target directory, so later runs start where this one
# stopped) seeded from the committed fuzz/corpus/<target>/, which is only read. A crash is
# written to fuzz/artifacts/<target>/ and its log is printed.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
seconds="${1:-${TESSERA_FUZZ_SECONDS:-5}}"
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "cargo-fuzz is not installed; run scripts/ensure-deps.sh" >&2
    exit 2
fi
export RUSTC_BOOTSTRAP=1
target_dir="${CARGO_TARGET_DIR:-$root/fuzz/target}"
cd "$root/fuzz"
cargo fuzz build
logs="$target_dir/fuzz-logs"
mkdir -p "$logs"
failed=()
for target in $(cargo fuzz list); do
    scratch="$target_dir/fuzz-corpus/$target"
    mkdir -p "$scratch"
    log="$logs/$target.log"
    if cargo fuzz run "$target" "$scratch" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 >"$log" 2>&1; then
        runs="$(grep -o 'Done [0-9]* runs' "$log" | tail -1 || true)"
        echo "$target: clean for ${seconds}s (${runs:-no run count})"
    else
        echo "$target: FAILED; log $log:" >&2
        tail -40 "$log" >&2
        failed+=("$target")
    fi
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzzing found crashes in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
