#!/usr/bin/env bash
# Runs the whole test suite. Installs what it needs first.
# Knobs: TESSERA_KILL_TRIALS (crash trials, default 8), TESSERA_MODEL_GENERATIONS (default 12).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/ensure-deps.sh
cargo build --workspace --bins
cargo test --workspace
