//! A whole pack file, read both ways the engine reads one: the footer path (trailer,
//! footer, then each entry's record header) and the recovery walk over the records from
//! offset 16. Never panics; every decoded footer entry lies inside the pack; the decoded
//! footer re-encodes to the pack's tail.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_format::pack::{
    decode_footer, decode_pack_header, decode_record_header, decode_trailer, encode_footer,
    PACK_HEADER_LEN, RECORD_HEADER_LEN, TRAILER_LEN,
};

/// Walks records from the pack header while their headers check out (the recovery scan).
fn walk(data: &[u8]) {
    let mut at = PACK_HEADER_LEN;
    while let Some(rest) = data.get(at..) {
        let Ok(info) = decode_record_header(rest) else {
            break;
        };
        at += RECORD_HEADER_LEN + info.stored_len as usize;
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = decode_pack_header(data);
    walk(data);
    let Some(trailer_at) = data.len().checked_sub(TRAILER_LEN) else {
        return;
    };
    let Ok(trailer) = decode_trailer(&data[trailer_at..], data.len() as u64) else {
        return;
    };
    let footer_at = usize::try_from(trailer.footer_offset).expect("the footer lies in the pack");
    let Ok(entries) = decode_footer(&data[footer_at..trailer_at], &trailer) else {
        return;
    };
    for e in &entries {
        let start = usize::try_from(e.offset).expect("the record lies in the pack");
        let end = start + RECORD_HEADER_LEN + e.info.stored_len as usize;
        assert!(PACK_HEADER_LEN <= start && end <= footer_at, "{e:?}");
        let _ = decode_record_header(&data[start..end]);
    }
    let again = encode_footer(&entries, trailer.footer_offset).expect("a decoded footer encodes");
    assert_eq!(again, &data[footer_at..]);
});
