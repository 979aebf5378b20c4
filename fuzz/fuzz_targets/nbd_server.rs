//! The NBD server (fixed-newstyle handshake, option haggling with and without TLS
//! required, the transmission phase) fed a client's bytes over an in-memory connection:
//! the first input byte picks the server (bit 0: TLS required), the rest is what the
//! client sends. Never panics, never hangs; what the server writes is checked
//! (`src/nbd_server.rs`): nothing about an export leaks before TLS, option replies are
//! well formed, and structured replies carry exactly the export's bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_fuzz::nbd_server::{check_plain, check_tls, serve};

fuzz_target!(|data: &[u8]| {
    let Some((&first, client)) = data.split_first() else {
        return;
    };
    let tls = first & 1 == 1;
    let out = serve(client, tls);
    if tls {
        check_tls(&out);
    } else {
        check_plain(&out);
    }
});
