//! The chunk store: encoding objects, writing packs, reading objects back.
//!
//! Crash reasoning: an object becomes findable only when (1) its pack is sealed and durable
//! ([`pack_writer::PackWriter::finish`]) and then (2) an index batch records its location
//! ([`session::WriteSession`]). A crash between the two leaves a sealed pack the index does
//! not know; the next writer adopts it ([`session::adopt_unindexed_packs`]), so rerunning
//! an interrupted backup reuses what was already sealed. A crash before (1) leaves only
//! what the backend staged, which the next writer discards.

pub mod encode;
#[cfg(feature = "repository")]
pub mod pack_scan;
#[cfg(feature = "repository")]
pub mod pack_sink;
#[cfg(feature = "repository")]
pub mod pack_writer;
#[cfg(feature = "repository")]
pub mod quarantine;
#[cfg(feature = "repository")]
pub mod reader;
#[cfg(feature = "repository")]
pub mod session;
pub mod snapshot_file;
