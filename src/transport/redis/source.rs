//! The learner's end of the trajectory stream: a consumer group that takes, acknowledges and
//! deletes, and counts what does not decode.
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::Value;

use super::super::codec::decode_batch;
use super::super::{Received, TrajectorySource};
use super::{lock, text, Link, RunKeys, GROUP, READ_BATCH};
use crate::error::Result;
use crate::trajectory::ActorBatch;

/// What a run through Redis counts for its rows: the actor processes whose heartbeat is alive,
/// and the messages skipped because they did not decode.
#[derive(Clone, Default)]
pub struct Gauges {
    pub alive: Arc<std::sync::atomic::AtomicU64>,
    pub undecodable: Arc<std::sync::atomic::AtomicU64>,
}

/// The learner's end: reads the stream through the consumer group, up to 16 messages a round
/// trip, and acknowledges and deletes what it took with the next read, once the learner has
/// ingested it.
pub struct RedisSource {
    link: Mutex<Link>,
    keys: RunKeys,
    /// Messages that did not decode, skipped.
    pub undecodable: Arc<AtomicU64>,
    state: Mutex<SourceState>,
}

/// Read but not yet taken, and taken but not yet acknowledged.
struct SourceState {
    /// Re-read what an earlier learner took but did not acknowledge, first.
    backlog: bool,
    buffer: VecDeque<(String, Vec<u8>, String)>,
    taken: Vec<String>,
}

/// `[[stream, [[id, [field, value, …]], …]]]` → `(id, body, actor)` of each entry; the bodies
/// are moved out of the reply, not copied.
fn entries(reply: Value) -> Vec<(String, Vec<u8>, String)> {
    let Value::Array(streams) = reply else {
        return Vec::new();
    };
    let Some(Value::Array(kv)) = streams.into_iter().next() else {
        return Vec::new();
    };
    let Some(Value::Array(list)) = kv.into_iter().nth(1) else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(list.len());
    for entry in list {
        let Value::Array(entry) = entry else { continue };
        let mut entry = entry.into_iter();
        let id = entry.next().as_ref().map(text).unwrap_or_default();
        let (mut body, mut actor) = (Vec::new(), String::new());
        if let Some(Value::Array(fields)) = entry.next() {
            let mut fields = fields.into_iter();
            while let (Some(k), Some(v)) = (fields.next(), fields.next()) {
                match (text(&k).as_str(), v) {
                    ("b", Value::BulkString(b)) => body = b,
                    ("a", v) => actor = text(&v),
                    _ => {}
                }
            }
        }
        out.push((id, body, actor));
    }
    out
}

/// Makes the learner's consumer group on `stream` (and the stream), reading from its start;
/// one that exists is kept.
fn create_group(c: &mut redis::Connection, stream: &str) -> redis::RedisResult<()> {
    match redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query::<()>(c)
    {
        Ok(()) => Ok(()),
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        Err(e) => Err(e),
    }
}

impl RedisSource {
    /// Joins (or creates) the run's consumer group.
    pub fn new(mut link: Link, keys: RunKeys) -> Result<Self> {
        let stream = keys.trajectories();
        link.run(|c| create_group(c, &stream))?;
        Ok(RedisSource {
            link: Mutex::new(link),
            keys,
            undecodable: Arc::new(AtomicU64::new(0)),
            state: Mutex::new(SourceState {
                backlog: true,
                buffer: VecDeque::new(),
                taken: Vec::new(),
            }),
        })
    }

    /// One round trip: acknowledge and delete what was taken, read up to 16 more.
    fn fill(&self, st: &mut SourceState, timeout: Duration) -> Result<()> {
        let stream = self.keys.trajectories();
        let from = if st.backlog { "0" } else { ">" };
        let block = timeout.as_millis().max(1) as u64;
        let taken = std::mem::take(&mut st.taken);
        let backlog = st.backlog;
        let mut made_again = false;
        let reply: Value = lock(&self.link).run(|c| {
            let mut p = redis::pipe();
            if !taken.is_empty() {
                p.cmd("XACK").arg(&stream).arg(GROUP).arg(&taken).ignore();
                p.cmd("XDEL").arg(&stream).arg(&taken).ignore();
            }
            let cmd = p.cmd("XREADGROUP");
            cmd.arg("GROUP")
                .arg(GROUP)
                .arg(GROUP)
                .arg("COUNT")
                .arg(READ_BATCH);
            if !backlog {
                cmd.arg("BLOCK").arg(block);
            }
            cmd.arg("STREAMS").arg(&stream).arg(from);
            match p.query::<(Value,)>(c) {
                Ok((reply,)) => Ok(reply),
                // Redis restarted without the stream or its group: make the group again, from
                // the stream's start, so what actors sent since is read too.
                // (Inside a pipeline the code is only in the message.)
                Err(e) if e.code() == Some("NOGROUP") || e.to_string().contains("NOGROUP") => {
                    create_group(c, &stream)?;
                    made_again = true;
                    Ok(Value::Nil)
                }
                Err(e) => Err(e),
            }
        })?;
        if made_again {
            eprintln!("the run's stream had no consumer group (Redis restarted?): made it again");
            st.backlog = false;
            return Ok(());
        }
        let got = entries(reply);
        if st.backlog && got.is_empty() {
            st.backlog = false; // nothing left from before: read new messages from now on
        }
        st.buffer.extend(got);
        Ok(())
    }

    /// The next batch within `timeout`, or none.
    pub fn recv(&self, timeout: Duration) -> Result<Option<ActorBatch>> {
        let deadline = Instant::now() + timeout;
        let mut st = lock(&self.state);
        loop {
            let Some((id, body, actor)) = st.buffer.pop_front() else {
                let left = deadline.saturating_duration_since(Instant::now());
                let was_backlog = st.backlog;
                self.fill(&mut st, left)?;
                if st.buffer.is_empty() && !was_backlog && Instant::now() >= deadline {
                    return Ok(None);
                }
                continue;
            };
            st.taken.push(id);
            match decode_batch(&body) {
                Ok(batch) => return Ok(Some(batch)),
                Err(e) => {
                    let n = self.undecodable.fetch_add(1, Ordering::Relaxed) + 1;
                    eprintln!(
                        "skipped a message from actor {actor:?} that does not decode ({e}); {n} so far"
                    );
                }
            }
        }
    }
}

impl TrajectorySource for RedisSource {
    fn recv_timeout(&self, timeout: Duration) -> Received {
        match self.recv(timeout) {
            Ok(Some(batch)) => Received::Batch(batch),
            Ok(None) => Received::Empty,
            Err(e) => {
                eprintln!("{e}");
                Received::Closed
            }
        }
    }
}
