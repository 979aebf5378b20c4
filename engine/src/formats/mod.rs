//! On-disk facts of foreign image formats shared by the readers (`sources`) and the writers
//! (`export`) of those formats, so that both sides agree on one definition.

pub mod vhd;
