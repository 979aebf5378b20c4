#!/usr/bin/env bash
# Runs the whole test suite. Installs what it needs first (no test skips: one that cannot run
# fails). Knobs: TESSERA_KILL_TRIALS (trials of each kill -9 loop: backup, prune, compact,
# rebuild (3x), repair, sync, killed pushes; default 4; each loop fails unless one of its kills
# interrupted the running operation), TESSERA_CRASH_IMAGE_MIB (image of the backup kill loop,
# default 256), TESSERA_MODEL_GENERATIONS (default 12), TESSERA_MODEL_STEPS (retention model
# steps, default 40), TESSERA_SEED (replay a seed), TESSERA_CRASH_KEEP_SEEDS (random-survival
# reboots per step of the power-loss matrix, default 1), TESSERA_FUZZ_SECONDS (fuzz smoke per
# target, default 3; longer runs by hand with scripts/fuzz.sh), TESSERA_JOBS_DAEMON_SECS (how
# long the job daemon's schedule test watches three jobs run every 2 s, default 15),
# TESSERA_INTERLEAVE_STEPS (random interleavings of backups, compactions, forgets and crashes
# through the engine, default 150).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/ensure-deps.sh
cargo build --workspace --bins
# Fuzz smoke: every decoder target for a few seconds (its own build cache, kept warm).
CARGO_TARGET_DIR="${TESSERA_FUZZ_TARGET_DIR:-$HOME/.cache/tessera-fuzz-target}" \
    ./scripts/fuzz.sh "${TESSERA_FUZZ_SECONDS:-3}"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace 2>&1 | tee "$log" || status=$?
# One closing line with the totals over every test binary (cargo prints one per binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
exit "$status"
