//! A pool of connections to one export, so several threads can read at once.
//!
//! Connections are opened on demand, up to `max`: a thread takes an idle one, or opens a
//! new one while fewer than `max` exist, or waits on the condition variable until one is
//! returned. A connection that failed in a way that leaves its stream out of step is
//! dropped instead of returned, which frees its slot (the next caller opens a fresh one),
//! so a dead connection never blocks the others and waiting threads always wake.
//! Every new connection must agree with the first on size and flags.

use std::sync::{Condvar, Mutex, PoisonError};

use super::transmission::Connection;
use crate::error::Result;

/// Opens one more negotiated connection.
pub type Opener = Box<dyn Fn() -> Result<Connection> + Send + Sync>;

struct State {
    idle: Vec<Connection>,
    open: usize,
}

/// Connections to one export.
pub struct Pool {
    state: Mutex<State>,
    returned: Condvar,
    max: usize,
    opener: Opener,
}

impl Pool {
    /// A pool holding `first`, growing to `max` connections with `opener`.
    pub fn new(first: Connection, max: usize, opener: Opener) -> Self {
        Self {
            state: Mutex::new(State {
                idle: vec![first],
                open: 1,
            }),
            returned: Condvar::new(),
            max: max.max(1),
            opener,
        }
    }

    /// Runs `f` on a connection of the pool.
    pub fn with<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        let mut conn = self.take()?;
        let result = f(&mut conn);
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if conn.broken {
            state.open -= 1;
            drop(state);
            drop(conn);
        } else {
            state.idle.push(conn);
            drop(state);
        }
        self.returned.notify_one();
        result
    }

    fn take(&self) -> Result<Connection> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(c) = state.idle.pop() {
                return Ok(c);
            }
            if state.open < self.max {
                state.open += 1;
                drop(state);
                let opened = (self.opener)();
                if opened.is_err() {
                    self.state
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .open -= 1;
                    self.returned.notify_one();
                }
                return opened;
            }
            state = self
                .returned
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}
