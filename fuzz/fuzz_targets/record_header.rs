//! `decode_record_header`: never panics; a decoded header re-encodes to the first 56 bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_format::pack::{decode_record_header, encode_record_header, RECORD_HEADER_LEN};
use tessera_fuzz::resealed;

fn check(bytes: &[u8]) {
    if let Ok(info) = decode_record_header(bytes) {
        let again = encode_record_header(&info).expect("a decoded record header encodes");
        assert_eq!(
            again,
            bytes[..RECORD_HEADER_LEN],
            "{info:?} re-encodes differently"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    // The header's CRC covers its first 52 bytes, whatever follows it.
    if let Some(mut header) = data.get(..RECORD_HEADER_LEN).and_then(resealed) {
        header.extend_from_slice(&data[RECORD_HEADER_LEN..]);
        check(&header);
    }
});
