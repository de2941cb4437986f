//! An actor's end of the run's trajectory stream, with the in-process channel's back-pressure.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::super::codec::encode_batch;
use super::super::{Closed, TrajectorySink};
use super::{lock, Link, RunKeys};
use crate::error::{Error, Result};
use crate::trajectory::ActorBatch;

/// An actor's end: sends each batch to the run's stream, waiting while `capacity` are queued.
pub struct RedisSink {
    link: Mutex<Link>,
    keys: RunKeys,
    capacity: usize,
    /// Who sends (named when a message does not decode).
    actor: String,
    /// The stream's length after this sink's last message.
    queued: AtomicU64,
    /// `XADD … MAXLEN ~` bound.
    maxlen: usize,
}

impl RedisSink {
    pub fn new(link: Link, keys: RunKeys, capacity: usize, actor: &str) -> Self {
        RedisSink {
            link: Mutex::new(link),
            keys,
            capacity: capacity.max(1),
            actor: actor.to_string(),
            queued: AtomicU64::new(0),
            maxlen: (capacity * 4).max(64),
        }
    }

    /// Bounds the stream at about `maxlen` messages (`transport.maxlen`): a hard bound on Redis's
    /// memory. Back-pressure keeps the stream near `capacity` plus one message per sender, so
    /// only a bound below that trims messages the learner has not read (they are lost).
    pub fn with_maxlen(mut self, maxlen: usize) -> Self {
        self.maxlen = maxlen.max(1);
        self
    }

    /// Reconnections of its link so far.
    pub fn reconnects(&self) -> u64 {
        lock(&self.link).reconnects
    }

    /// Sends raw bytes as a message (the tests send damaged ones). One round trip: the message
    /// goes in with the stream's length and the stop flag read back; when that length reached
    /// `capacity`, the next send first waits until the learner has taken some.
    pub fn send_bytes(&self, message: &[u8]) -> Result<()> {
        let mut link = lock(&self.link);
        let (stream, stop) = (self.keys.trajectories(), self.keys.stop());
        let mut queued = self.queued.load(Ordering::Relaxed) as usize;
        while queued >= self.capacity {
            std::thread::sleep(Duration::from_millis(1));
            let (n, stopped): (usize, Option<String>) = link.run(|c| {
                redis::pipe()
                    .cmd("XLEN")
                    .arg(&stream)
                    .cmd("GET")
                    .arg(&stop)
                    .query(c)
            })?;
            if stopped.is_some() {
                return Err(Error::Corrupt("the run has stopped".into()));
            }
            queued = n;
        }
        let bound = self.maxlen;
        let (_, n, stopped): (String, usize, Option<String>) = link.run(|c| {
            redis::pipe()
                .cmd("XADD")
                .arg(&stream)
                .arg("MAXLEN")
                .arg("~")
                .arg(bound)
                .arg("*")
                .arg("b")
                .arg(message)
                .arg("a")
                .arg(&self.actor)
                .cmd("XLEN")
                .arg(&stream)
                .cmd("GET")
                .arg(&stop)
                .query(c)
        })?;
        self.queued.store(n as u64, Ordering::Relaxed);
        if stopped.is_some() {
            return Err(Error::Corrupt("the run has stopped".into()));
        }
        Ok(())
    }
}

impl TrajectorySink for RedisSink {
    fn send(&self, batch: ActorBatch) -> std::result::Result<(), Closed> {
        self.send_bytes(&encode_batch(&batch)).map_err(|_| Closed)
    }
}
