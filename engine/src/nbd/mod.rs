//! Read-only NBD export of a snapshot's disks (in progress).
