//! Shared pieces of tessera's benchmarks: the seeded test-data generator (used by the
//! criterion micro-benchmarks and the macro benchmark) and, for the macro benchmark, the
//! process runner that measures wall time, CPU time and peak memory of external commands, and
//! the retention cost curves, many writers at once; and the full-verify measurement against
//! its baseline.

pub mod bin_args;
pub mod datagen;
pub mod delta_sources;
pub mod fleet;
pub mod measure;
pub mod plot;
pub mod retention;
pub mod verify_measure;
