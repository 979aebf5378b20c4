//! `ManifestPage::decode`: never panics; a decoded page re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_format::ManifestPage;

fuzz_target!(|data: &[u8]| {
    if let Ok(page) = ManifestPage::decode(data) {
        let again = page.encode().expect("a decoded page encodes");
        assert_eq!(again, data);
    }
});
