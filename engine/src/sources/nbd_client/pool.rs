//! A pool of connections to one export, so several threads can read at once.
//!
//! Connections are opened on demand, up to `max`: a thread takes an idle one, or opens a
//! new one while fewer than `max` exist, or waits on the condition variable until one is
//! returned. When opening a further connection fails while others exist (a server
//! limiting its clients), the limit drops to the connections open and the pool carries on. A connection that failed in a way that leaves its stream out of step (I/O
//! error, timeout, protocol violation) is dropped instead of returned, and the pool is then
//! *failed*: every later request gets that first error at once instead of reconnecting, so
//! a dead or hostile server costs one timeout, not one per reading thread, and waiting
//! threads always wake. Errors the server reports in a well-formed reply (an NBD error
//! chunk) leave the connection and the pool usable. Every new connection must agree with
//! the first on size and flags (checked by the opener).

use std::path::PathBuf;
use std::sync::{Condvar, Mutex, PoisonError};

use super::transmission::Connection;
use crate::error::{Error, Result};

/// Opens one more negotiated connection.
pub type Opener = Box<dyn Fn() -> Result<Connection> + Send + Sync>;

struct State {
    idle: Vec<Connection>,
    open: usize,
    /// Most connections to have open (lowered when the server refuses more).
    limit: usize,
    /// The first error that broke a connection.
    failed: Option<String>,
}

/// Connections to one export.
pub struct Pool {
    state: Mutex<State>,
    returned: Condvar,
    opener: Opener,
    url: String,
}

impl Pool {
    /// A pool holding `first`, growing to `max` connections with `opener`.
    pub fn new(first: Connection, max: usize, opener: Opener, url: String) -> Self {
        Self {
            state: Mutex::new(State {
                idle: vec![first],
                open: 1,
                limit: max.max(1),
                failed: None,
            }),
            returned: Condvar::new(),
            opener,
            url,
        }
    }

    /// Runs `f` on a connection of the pool.
    pub fn with<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        let mut conn = self.take()?;
        let result = f(&mut conn);
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if conn.broken {
            state.open -= 1;
            if let Err(e) = &result {
                state.failed.get_or_insert_with(|| e.to_string());
            }
            drop(state);
            drop(conn);
            self.returned.notify_all();
            return result;
        }
        state.idle.push(conn);
        drop(state);
        self.returned.notify_one();
        result
    }

    fn take(&self) -> Result<Connection> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(first) = &state.failed {
                return Err(Error::Source {
                    path: PathBuf::from(&self.url),
                    source: std::io::Error::other(format!(
                        "an earlier request to this NBD server failed, so no more are sent ({first})"
                    )),
                });
            }
            if let Some(c) = state.idle.pop() {
                return Ok(c);
            }
            if state.open < state.limit {
                state.open += 1;
                drop(state);
                let opened = (self.opener)();
                state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
                match opened {
                    Ok(c) => return Ok(c),
                    Err(e) => {
                        state.open -= 1;
                        if state.open == 0 {
                            state.failed.get_or_insert_with(|| e.to_string());
                        } else {
                            state.limit = state.open;
                        }
                        self.returned.notify_all();
                        continue;
                    }
                }
            }
            state = self
                .returned
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}
