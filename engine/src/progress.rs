//! Progress reporting from long operations to whatever front end runs them.

/// Receives progress of a long operation. Implementations must be cheap: `advance` is called
/// once per batch of blocks from the operation's main thread.
pub trait Progress: Sync {
    /// A new phase begins, of `total` units (bytes unless the phase says otherwise).
    fn start(&self, phase: &str, total: u64);
    /// `n` more units are done.
    fn advance(&self, n: u64);
    /// The phase is over.
    fn finish(&self);
}

/// Ignores progress.
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _phase: &str, _total: u64) {}
    fn advance(&self, _n: u64) {}
    fn finish(&self) {}
}
