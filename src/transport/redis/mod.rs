//! The transport through Redis (SPEC §4.3), for actors on other hosts: trajectories through one
//! bounded stream per run, read by the learner through a consumer group; weights as chunks under
//! versioned keys with a notification stream; the run's stop flag, failure and the learner's
//! position (the pacing for `replay.max_policy_lag`) as plain keys. Every key of run `NAME` starts
//! with `asymre:NAME:`.
//!
//! - **Trajectories**: `XADD …:trajectories` with the message ([`super::codec`]) and the actor's
//!   name. The stream holds only what the learner has not taken yet: the learner acknowledges
//!   and deletes each message once ingested, and an actor waits while `capacity` messages are
//!   queued (the back-pressure of the in-process channel, across hosts). `MAXLEN ~` bounds it
//!   even so. A message that does not decode is counted, reported with the actor that sent it,
//!   and skipped. A learner that restarts first re-reads what it had taken but not acknowledged.
//! - **Weights**: version `v` is `…:weights:v:0 … :k-1` (chunks of at most `chunk_bytes`) and
//!   `…:weights:v` (the chunk count); `…:latest` names the newest complete version, written
//!   after its chunks, and `…:versions` is a short stream actors may block on. The newest `keep`
//!   versions stay; older ones are deleted, so Redis holds a bounded number of copies. A reader
//!   that finds a chunk gone (deleted under it) reads the newer version instead.
//! - **Connection loss** (Redis restarted, network cut): each operation reconnects with backoff
//!   for up to `patience`, saying so on stderr, then fails with one line naming the URL.
mod board;
mod conn;
mod control;
mod heartbeat;
mod keys;
mod server;
mod sink;
mod source;
#[cfg(test)]
pub(crate) mod tests;

use std::sync::Mutex;
use std::time::Duration;

use redis::Value;

pub use board::RedisBoard;
pub use conn::Link;
pub use control::RedisControl;
pub use heartbeat::{alive, heartbeat, sleep_unless, HEARTBEAT_TTL};
pub use keys::RunKeys;
pub use server::LocalServer;
pub use sink::RedisSink;
pub use source::{Gauges, RedisSource};

/// The learner's consumer group (and its one consumer).
const GROUP: &str = "learner";
/// Messages the learner reads in one round trip.
const READ_BATCH: usize = 16;
/// Entries kept in a notification stream (`versions`, `steps`): waiters need only the newest.
const NOTIFICATIONS_KEPT: usize = 16;
/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The first wait before reconnecting, doubled after each failure up to the second.
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(super) fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

pub(super) fn text(v: &Value) -> String {
    bytes(v)
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default()
}
