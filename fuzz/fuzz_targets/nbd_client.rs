//! The NBD client (option replies of the handshake, structured READ replies, BLOCK_STATUS
//! replies and the export walk), fed a server's bytes over a socket pair: the first input
//! byte says whether a dirty bitmap is asked for, the rest is what the server sends. Never
//! panics; a session that succeeds is within the limits (`src/nbd_client.rs`), every
//! failure is the server's fault (a protocol violation or a cut connection), and every
//! byte of a successful read comes from the server: two replays into buffers filled with
//! different bytes end the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_fuzz::checks::assert_input_error;
use tessera_fuzz::nbd_client::{check_session, replay, MAX_TRANSCRIPT};

fuzz_target!(|data: &[u8]| {
    let Some((&first, transcript)) = data.split_first() else {
        return;
    };
    if transcript.len() > MAX_TRANSCRIPT {
        return;
    }
    let bitmap = first & 1 == 1;
    let zeros = replay(transcript, bitmap, 0x00);
    let ones = replay(transcript, bitmap, 0xff);
    match (&zeros, &ones) {
        (Ok(a), Ok(b)) => {
            check_session(a, bitmap);
            assert_eq!(a, b, "a read left bytes the server did not send");
        }
        (Err(a), Err(b)) => {
            assert_input_error(a);
            assert_eq!(a.to_string(), b.to_string());
        }
        _ => panic!("replays differ: {zeros:?} / {ones:?}"),
    }
});
