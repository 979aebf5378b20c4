//! Export of a snapshot's disk, or of the delta between two snapshots, as raw, qcow2 or VHD
//! (in progress).
