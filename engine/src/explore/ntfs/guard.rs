//! A net under the `ntfs` crate: it has no unsafe code and checks most of what it reads, but
//! 0.4 still indexes and adds unchecked in a few places on crafted input (an index record
//! whose sizes overflow, a header shorter than its fields: `record.rs` checks the file
//! records it can, not the index records). Such a panic must not end `tessera files`: the
//! calls into the crate run under [`guarded`], which turns a panic raised *inside the crate
//! or the crates it parses with* into [`FsError::Corrupt`].
//!
//! The process's panic hook is chained once: while a thread is inside [`guarded`], a panic
//! whose location is in those crates' sources is kept quiet (its message goes into the
//! error); every other panic — tessera's own above all — goes to the hook that was there
//! before (under the fuzzer, libFuzzer's, which aborts and reports it).

use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

use crate::explore::FsError;

/// Source paths of the crates whose panics are caught: `ntfs` and what it parses with.
const CAUGHT: [&str; 4] = ["/ntfs-0.", "/byteorder-", "/binrw-", "/nt-string-"];

thread_local! {
    static INSIDE: Cell<bool> = const { Cell::new(false) };
    static CAUGHT_MESSAGE: RefCell<Option<String>> = const { RefCell::new(None) };
}

static HOOK: Once = Once::new();

fn install_hook() {
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let in_crate = info
                .location()
                .is_some_and(|l| CAUGHT.iter().any(|c| l.file().contains(c)));
            // Under panic=abort nothing unwinds to `guarded`: the previous hook must tell.
            if cfg!(panic = "unwind") && in_crate && INSIDE.with(Cell::get) {
                let payload = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(ToString::to_string)
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                let at = info
                    .location()
                    .map(|l| format!(" at {}:{}", l.file(), l.line()))
                    .unwrap_or_default();
                CAUGHT_MESSAGE.with(|m| *m.borrow_mut() = Some(format!("{payload}{at}")));
            } else {
                previous(info);
            }
        }));
    });
}

/// Runs `f`; a panic of the `ntfs` crate inside it becomes [`FsError::Corrupt`] naming
/// `what`. Any other panic goes on unwinding.
pub(super) fn guarded<T>(
    what: &dyn Fn() -> String,
    f: impl FnOnce() -> Result<T, FsError>,
) -> Result<T, FsError> {
    install_hook();
    let outer = INSIDE.with(|i| i.replace(true));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    INSIDE.with(|i| i.set(outer));
    match result {
        Ok(r) => r,
        Err(payload) => match CAUGHT_MESSAGE.with(|m| m.borrow_mut().take()) {
            Some(message) => Err(FsError::corrupt(format!(
                "{}: the NTFS structures are malformed in a way the `ntfs` crate does not \
                 check ({message})",
                what()
            ))),
            None => panic::resume_unwind(payload),
        },
    }
}
