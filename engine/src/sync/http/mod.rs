//! The HTTP protocol of `tessera serve` and remote sync (SPEC.md §22.3).
//!
//! Every request carries `Authorization: Bearer TOKEN`; without the right token the server
//! answers 401 before reading the body or touching the repository. Bodies are binary:
//!
//! | request | body | answer |
//! |---|---|---|
//! | `GET /v1/info` | — | JSON `{"id_scheme": 1}` |
//! | `GET /v1/snapshots` | — | JSON list of `{id, series, time_us, disks: [[name, block_size]]}` |
//! | `GET /v1/snapshots/ID` | — | the snapshot file |
//! | `POST /v1/have/KIND` | ≤ 65 536 digests (32 bytes each) | one byte per digest: 1 = held |
//! | `POST /v1/get/KIND` | ≤ 4096 digests | records (56-byte record header + stored bytes) for a prefix of them, ≤ 64 MiB |
//! | `POST /v1/put/KIND` | records, ≤ 80 MiB | JSON `{"stored": N}` |
//! | `POST /v1/publish` | a snapshot file, ≤ 64 MiB | JSON `{"id": ID}` |
//!
//! `KIND` is `chunk` or `page`. Records use the pack record header of SPEC.md §4.
//!
//! The same protocol runs over HTTPS when the server is given a certificate and key
//! ([`tls`]). The server speaks HTTP/1.1 through [`http1`].

pub mod client;
pub mod http1;
pub mod server;
pub mod tls;
pub mod wire;
