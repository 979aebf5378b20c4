//! The job layer (SPEC.md §26): job files, runs, history, hooks, notifications, the
//! scheduler daemon and its metrics. It calls the operations the commands call
//! (`ops::backup`, `ops::prune`, `ops::verify`, `sync`) and adds no second way of doing any
//! of them.
//!
//! - [`file`]: the TOML job file, checked value by value ([`values`], [`schedule`]) with
//!   errors located by line, column and key ([`keys`]).
//! - [`run`]: one run, step by step, recorded durably in [`history`] as a [`record`].
//! - [`hooks`], [`notify`]: commands around the backup; webhook and email notifications.
//! - [`daemon`]: schedules, catch-up, parallelism, reload and shutdown; [`metrics`] and
//!   [`metrics_server`]: `/metrics`.

pub mod daemon;
pub mod file;
pub mod history;
pub mod hooks;
mod keys;
pub mod metrics;
pub mod metrics_server;
pub mod notify;
pub mod record;
pub mod run;
pub mod schedule;
pub mod values;

pub use file::Job;
