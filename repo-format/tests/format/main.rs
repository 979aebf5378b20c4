//! Tests of the on-disk formats: exact round-trips, mutated and re-sealed inputs, encoders
//! refusing what decoders refuse, and named regressions. One test binary, so the shared
//! strategies are compiled (and linted) once.

mod mutation;
mod refusals;
mod regressions;
mod roundtrip;
mod strategies;
