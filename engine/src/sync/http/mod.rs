//! The HTTP protocol of `tessera serve` and remote sync (SPEC.md §22.3).
//!
//! Every request carries `Authorization: Bearer TOKEN`, a token of the server's tokens file
//! ([`tokens`]) whose role allows the endpoint; otherwise the server refuses (401, 403)
//! before reading the body or touching the repository. Bodies are binary:
//!
//! | request | body | answer | roles |
//! |---|---|---|---|
//! | `GET /v1/info` | — | JSON `{"id_scheme": 1}` | all |
//! | `GET /v1/snapshots` | — | JSON list of `{id, series, time_us, disks: [[name, block_size]]}` (the token's series) | all |
//! | `GET /v1/snapshots/ID` | — | the snapshot file (of the token's series) | all |
//! | `POST /v1/have/KIND` | ≤ 65 536 digests (32 bytes each) | one byte per digest: 1 = held | backup, admin |
//! | `POST /v1/get/KIND` | ≤ 4096 digests | records (56-byte record header + stored bytes) for a prefix of them, ≤ 64 MiB (pages: of the token's series) | read, admin |
//! | `POST /v1/put/KIND` | records, ≤ 80 MiB, decoding to ≤ 256 MiB | JSON `{"stored": N}` | backup, admin |
//! | `POST /v1/publish` | a snapshot file (of the token's series), ≤ 80 MiB | JSON `{"id": ID}` | backup (one per series per interval), admin |
//!
//! Any other answer than 200 has the body `{"kind": KIND|null, "message": TEXT}`
//! ([`routes::Refusal`]): KIND names the error kind the client reports (e.g. `damage` for
//! a damaged repository on the server).
//! `KIND` is `chunk` or `page`. Records use the pack record header of SPEC.md §4. There are
//! no endpoints that remove anything: retention (forget, prune, compact) runs on the server's
//! machine only, so no token can destroy backups.
//!
//! The same protocol runs over HTTPS when the server is given a certificate and key
//! ([`tls`]). The server is hyper's HTTP/1.1 on tokio ([`server`]).

#[cfg(feature = "repository")]
pub mod audit;
#[cfg(feature = "repository")]
pub mod client;
#[cfg(feature = "repository")]
pub mod conn;
#[cfg(feature = "repository")]
pub mod limiter;
#[cfg(feature = "repository")]
pub mod quota;
#[cfg(feature = "repository")]
pub mod routes;
#[cfg(feature = "repository")]
pub mod server;
#[cfg(feature = "repository")]
pub mod service;
pub mod tls;
#[cfg(feature = "repository")]
pub mod tokens;
#[cfg(feature = "repository")]
pub mod visible;
pub mod wire;
