//! `decode_trailer` and `decode_footer` on `pack_len:u64 || footer || trailer`: never
//! panic; a decoded trailer fits the pack length; every decoded entry lies in the record
//! area; the decoded footer re-encodes to the same footer and trailer bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_format::pack::{
    decode_footer, decode_trailer, encode_footer, PACK_HEADER_LEN, TRAILER_LEN,
};
use tessera_fuzz::{put_u32_at, resealed};

fn check(pack_len: u64, tail: &[u8]) {
    let Some(footer_len) = tail.len().checked_sub(TRAILER_LEN) else {
        return;
    };
    let (footer, trailer_bytes) = tail.split_at(footer_len);
    let Ok(trailer) = decode_trailer(trailer_bytes, pack_len) else {
        return;
    };
    assert_eq!(trailer.pack_len(), Some(pack_len));
    let Ok(entries) = decode_footer(footer, &trailer) else {
        return;
    };
    assert_eq!(entries.len(), trailer.count as usize);
    for e in &entries {
        let end = e.data_offset().checked_add(u64::from(e.info.stored_len));
        assert!(e.offset >= PACK_HEADER_LEN as u64, "{e:?}");
        assert!(end.is_some_and(|end| end <= trailer.footer_offset), "{e:?}");
    }
    let again = encode_footer(&entries, trailer.footer_offset).expect("a decoded footer encodes");
    assert_eq!(again, tail);
}

fuzz_target!(|data: &[u8]| {
    let Some((pack_len, tail)) = data.split_first_chunk::<8>() else {
        return;
    };
    let pack_len = u64::from_le_bytes(*pack_len);
    check(pack_len, tail);
    // Re-sealed: the footer CRC (trailer bytes 12..16) over the footer, then the trailer CRC.
    let Some(footer_len) = tail.len().checked_sub(TRAILER_LEN) else {
        return;
    };
    let mut sealed = tail.to_vec();
    put_u32_at(
        &mut sealed,
        footer_len + 12,
        crc32c::crc32c(&tail[..footer_len]),
    );
    let trailer_end = footer_len + 24;
    if let Some(trailer) = resealed(&sealed[footer_len..trailer_end]) {
        sealed[footer_len..trailer_end].copy_from_slice(&trailer);
    }
    check(pack_len, &sealed);
});
