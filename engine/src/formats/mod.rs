//! On-disk and on-wire facts of foreign formats and protocols shared by the readers
//! (`sources`) and the writers (`export`, the NBD server `nbd`) of those formats, so that both
//! sides agree on one definition.

pub mod nbd;
pub mod qcow2;
pub mod vhd;
