//! `decode_pack_header`: never panics; only the one valid header decodes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_format::pack::{decode_pack_header, encode_pack_header, PACK_HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    if decode_pack_header(data).is_ok() {
        assert_eq!(&data[..PACK_HEADER_LEN], encode_pack_header());
    }
});
