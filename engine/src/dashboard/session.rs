//! Dashboard sessions (SPEC §27.2): what a login with a token of role `read` or `admin`
//! gives the browser, and the secrets its forms carry.
//!
//! A session is 32 random bytes, sent to the browser once as the `tessera_session` cookie
//! (HttpOnly, SameSite=Strict, Path=/, Secure when served over TLS). The server keeps only
//! its SHA-256, with the hash of the token that logged in, a CSRF secret and the forget
//! confirmations it has shown. Every request looks the token up again in the current tokens
//! ([`super::super::sync::http::tokens`]): removing a token (`tessera token remove`) ends its
//! sessions at their next request, and a session never has more rights than its token has
//! now (the role and series are the token's, read each time).
//!
//! Bounds: at most [`MAX_SESSIONS`] sessions (the least recently used is dropped when a login
//! needs room), each ends after [`IDLE`] without a request or [`LIFETIME`] after its login,
//! and holds at most [`MAX_CONFIRMATIONS`] confirmations, each valid for [`CONFIRM_TIME`].
//! Sessions live in the server's memory only: a restart logs everyone out.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tessera_format::SnapshotId;

/// The session cookie's name.
pub const COOKIE: &str = "tessera_session";
/// Most sessions held at once.
pub const MAX_SESSIONS: usize = 256;
/// Most sessions of one token (its least recently used is ended for a new login).
pub const MAX_SESSIONS_PER_TOKEN: usize = 16;
/// A session ends after this long without a request.
#[expect(
    clippy::duration_suboptimal_units,
    reason = "Duration::from_mins needs Rust 1.91; the workspace's rust-version is 1.89"
)]
pub const IDLE: Duration = Duration::from_secs(30 * 60);
/// A session ends this long after its login, used or not.
#[expect(
    clippy::duration_suboptimal_units,
    reason = "Duration::from_mins needs Rust 1.91; the workspace's rust-version is 1.89"
)]
pub const LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Most forget confirmations a session holds (the oldest is dropped).
pub const MAX_CONFIRMATIONS: usize = 16;
/// How long a forget confirmation stays valid.
#[expect(
    clippy::duration_suboptimal_units,
    reason = "Duration::from_mins needs Rust 1.91; the workspace's rust-version is 1.89"
)]
pub const CONFIRM_TIME: Duration = Duration::from_secs(10 * 60);

/// A forget the server showed the figures of: the confirmation token the page carried, and
/// the exact bytes it said the forget frees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirmation {
    /// The secret the confirmation form carries (hex).
    pub token: String,
    /// The snapshot to forget.
    pub snapshot: SnapshotId,
    /// Stored bytes the page said forgetting it frees.
    pub freed_bytes: u64,
    made: Instant,
}

/// One logged-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    /// SHA-256 of the token that logged in.
    pub token_hash: [u8; 32],
    /// The secret every form of the session carries (hex).
    pub csrf: String,
    created: Instant,
    last_seen: Instant,
    confirmations: Vec<Confirmation>,
}

/// The sessions of one server.
#[derive(Debug, Default)]
pub struct Sessions {
    table: Mutex<HashMap<[u8; 32], Session>>,
}

/// 32 random bytes as 64 hex digits.
pub fn random_secret() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

fn key_of(cookie: &str) -> [u8; 32] {
    Sha256::digest(cookie.as_bytes()).into()
}

/// Whether two strings are equal, in time independent of where they differ.
pub fn secrets_equal(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl Sessions {
    /// Starts a session for the token hashing to `token_hash`; returns the cookie value.
    pub fn login(&self, token_hash: [u8; 32]) -> String {
        let cookie = random_secret();
        let now = Instant::now();
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        table.retain(|_, s| s.alive(now));
        // One token's logins make room among its own sessions first, so that the holder of
        // one token cannot log everyone else out by logging in many times.
        let own = table
            .values()
            .filter(|s| s.token_hash == token_hash)
            .count();
        let evict = if own >= MAX_SESSIONS_PER_TOKEN {
            least_recent(&table, |s| s.token_hash == token_hash)
        } else if table.len() >= MAX_SESSIONS {
            least_recent(&table, |_| true)
        } else {
            None
        };
        if let Some(key) = evict {
            table.remove(&key);
        }
        table.insert(
            key_of(&cookie),
            Session {
                token_hash,
                csrf: random_secret(),
                created: now,
                last_seen: now,
                confirmations: Vec::new(),
            },
        );
        cookie
    }

    /// The live session of `cookie`, marked as used now.
    pub fn get(&self, cookie: &str) -> Option<Session> {
        let now = Instant::now();
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let key = key_of(cookie);
        let session = table.get_mut(&key)?;
        if !session.alive(now) {
            table.remove(&key);
            return None;
        }
        session.last_seen = now;
        Some(session.clone())
    }

    /// Ends the session of `cookie`.
    pub fn logout(&self, cookie: &str) {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        table.remove(&key_of(cookie));
    }

    /// Remembers that the session of `cookie` was shown that forgetting `snapshot` frees
    /// `freed_bytes`, under the confirmation `token` its form carries. False when the
    /// session is gone.
    pub fn confirm(
        &self,
        cookie: &str,
        token: String,
        snapshot: SnapshotId,
        freed_bytes: u64,
    ) -> bool {
        let now = Instant::now();
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(session) = table.get_mut(&key_of(cookie)) else {
            return false;
        };
        session
            .confirmations
            .retain(|c| now.duration_since(c.made) < CONFIRM_TIME);
        if session.confirmations.len() >= MAX_CONFIRMATIONS {
            session.confirmations.remove(0);
        }
        session.confirmations.push(Confirmation {
            token,
            snapshot,
            freed_bytes,
            made: now,
        });
        true
    }

    /// Takes (once) the confirmation `token` of the session of `cookie`, if it is valid
    /// and for `snapshot`.
    pub fn take_confirmation(
        &self,
        cookie: &str,
        snapshot: SnapshotId,
        token: &str,
    ) -> Option<Confirmation> {
        let now = Instant::now();
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let session = table.get_mut(&key_of(cookie))?;
        let at = session.confirmations.iter().position(|c| {
            c.snapshot == snapshot
                && secrets_equal(&c.token, token)
                && now.duration_since(c.made) < CONFIRM_TIME
        })?;
        Some(session.confirmations.remove(at))
    }
}

/// The key of the least recently used session `pick` accepts.
fn least_recent(
    table: &HashMap<[u8; 32], Session>,
    pick: impl Fn(&Session) -> bool,
) -> Option<[u8; 32]> {
    table
        .iter()
        .filter(|(_, s)| pick(s))
        .min_by_key(|(_, s)| s.last_seen)
        .map(|(k, _)| *k)
}

impl Session {
    fn alive(&self, now: Instant) -> bool {
        now.duration_since(self.last_seen) < IDLE && now.duration_since(self.created) < LIFETIME
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_found_by_its_cookie_only_and_ends_at_logout() {
        let sessions = Sessions::default();
        let cookie = sessions.login([1; 32]);
        assert_eq!(sessions.get(&cookie).unwrap().token_hash, [1; 32]);
        assert!(sessions.get(&random_secret()).is_none());
        sessions.logout(&cookie);
        assert!(sessions.get(&cookie).is_none());
    }

    #[test]
    fn a_confirmation_is_taken_once_and_only_for_its_snapshot() {
        let sessions = Sessions::default();
        let cookie = sessions.login([1; 32]);
        let (a, b) = (SnapshotId([1; 32]), SnapshotId([2; 32]));
        let token = random_secret();
        assert!(sessions.confirm(&cookie, token.clone(), a, 77));
        assert!(sessions.take_confirmation(&cookie, b, &token).is_none());
        let other = sessions.login([1; 32]);
        assert!(sessions.take_confirmation(&other, a, &token).is_none());
        assert_eq!(
            sessions
                .take_confirmation(&cookie, a, &token)
                .unwrap()
                .freed_bytes,
            77
        );
        assert!(sessions.take_confirmation(&cookie, a, &token).is_none());
    }

    #[test]
    fn one_token_cannot_log_out_the_others() {
        let sessions = Sessions::default();
        let admin = sessions.login([9; 32]);
        for _ in 0..MAX_SESSIONS * 2 {
            sessions.login([1; 32]);
        }
        assert!(sessions.get(&admin).is_some());
    }

    #[test]
    fn the_table_is_bounded() {
        let sessions = Sessions::default();
        let first = sessions.login([0; 32]);
        for i in 0..MAX_SESSIONS {
            sessions.login([(i % 250) as u8 + 1; 32]);
        }
        assert!(sessions.get(&first).is_none());
        assert_eq!(
            sessions
                .table
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .len(),
            MAX_SESSIONS
        );
    }
}
