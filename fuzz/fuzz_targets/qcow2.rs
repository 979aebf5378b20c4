//! qcow2 images (`Qcow2Source::from_bytes`: header, header extensions including the
//! backing format, feature names and the dirty-bitmap directory pointer, backing file
//! name, L1 and L2 tables, extended L2, compressed clusters). Never panics; an image that
//! opens reads consistently and only as far as it promises (`src/qcow2.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tessera_fuzz::qcow2::check(data));
