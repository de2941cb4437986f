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
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::Value;

use super::codec::{decode_batch, decode_snapshot, encode_batch, encode_snapshot};
use super::{Closed, Received, RunControl, TrajectorySink, TrajectorySource, WeightBoard};
use crate::error::{Error, Result};
use crate::policy::WeightSnapshot;
use crate::trajectory::ActorBatch;

/// The learner's consumer group (and its one consumer).
const GROUP: &str = "learner";

/// The names of one run's keys.
#[derive(Debug, Clone)]
pub struct RunKeys {
    prefix: String,
}

impl RunKeys {
    pub fn new(run: &str) -> Self {
        RunKeys {
            prefix: format!("asymre:{run}"),
        }
    }
    fn key(&self, rest: &str) -> String {
        format!("{}:{rest}", self.prefix)
    }
    pub fn trajectories(&self) -> String {
        self.key("trajectories")
    }
    fn chunk(&self, version: u64, i: usize) -> String {
        self.key(&format!("weights:{version}:{i}"))
    }
    fn chunks(&self, version: u64) -> String {
        self.key(&format!("weights:{version}"))
    }
    fn latest(&self) -> String {
        self.key("latest")
    }
    fn versions(&self) -> String {
        self.key("versions")
    }
    fn stop(&self) -> String {
        self.key("stop")
    }
    fn failure(&self) -> String {
        self.key("failure")
    }
    fn learner(&self) -> String {
        self.key("learner")
    }
    fn claimed(&self) -> String {
        self.key("claimed")
    }
    /// A short stream with an entry at every learner step and at the stop: what paced actors
    /// block on.
    fn steps(&self) -> String {
        self.key("steps")
    }
    /// The run's resolved config (TOML), for actors that join.
    pub fn config(&self) -> String {
        self.key("config")
    }
    /// The learner's session (actors' prompt ids carry it).
    pub fn session(&self) -> String {
        self.key("session")
    }
    /// The next actor id to hand out (local actors take the first ones).
    pub fn actor_ids(&self) -> String {
        self.key("actor_ids")
    }
    /// Actor `id`'s heartbeat: its sender's name, with a time to live.
    pub fn alive(&self, id: usize) -> String {
        self.key(&format!("alive:{id}"))
    }
    /// Version `version`'s file name, for weights on a shared filesystem.
    fn weights_file(&self, version: u64) -> String {
        format!("{}-weights-{version}.bin", self.prefix.replace(':', "-"))
    }
    /// Every heartbeat of the run (a `SCAN` pattern).
    pub fn alive_pattern(&self) -> String {
        self.key("alive:*")
    }
}

/// How long a heartbeat lives: an actor process silent for this long is lost.
pub const HEARTBEAT_TTL: Duration = Duration::from_secs(10);

/// Refreshes the heartbeats of `ids` (named `names`) every second until `done`, then deletes
/// them: a clean leave.
pub fn heartbeat(
    link: &mut Link,
    keys: &RunKeys,
    actors: &[(usize, String)],
    done: &dyn Fn() -> bool,
) -> Result<()> {
    let ttl = HEARTBEAT_TTL.as_secs();
    while !done() {
        link.run(|c| {
            let mut p = redis::pipe();
            for (id, name) in actors {
                p.cmd("SET")
                    .arg(keys.alive(*id))
                    .arg(name)
                    .arg("EX")
                    .arg(ttl)
                    .ignore();
            }
            p.query::<()>(c)
        })?;
        sleep_unless(done, Duration::from_secs(1));
    }
    let doomed: Vec<String> = actors.iter().map(|(id, _)| keys.alive(*id)).collect();
    link.run(|c| redis::cmd("DEL").arg(&doomed).query::<()>(c))
}

/// Sleeps for `total` in tenths, waking early once `done`.
pub fn sleep_unless(done: &dyn Fn() -> bool, total: Duration) {
    for _ in 0..10 {
        if done() {
            return;
        }
        std::thread::sleep(total / 10);
    }
}

/// The actors whose heartbeat is alive: id → sender's name.
pub fn alive(link: &mut Link, keys: &RunKeys) -> Result<std::collections::BTreeMap<usize, String>> {
    let pattern = keys.alive_pattern();
    let found: Vec<String> = link.run(|c| {
        let mut out = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query(c)?;
            out.extend(batch);
            if next == 0 {
                return Ok(out);
            }
            cursor = next;
        }
    })?;
    if found.is_empty() {
        return Ok(Default::default());
    }
    // Their names in one round trip (a key that expired since the scan reads as none).
    let names: Vec<Option<String>> = link.run(|c| redis::cmd("MGET").arg(&found).query(c))?;
    Ok(found
        .iter()
        .zip(names)
        .filter_map(|(key, name)| {
            let id = key.rsplit(':').next()?.parse().ok()?;
            Some((id, name?))
        })
        .collect())
}

/// One connection to Redis that reconnects when it is lost.
pub struct Link {
    url: String,
    client: redis::Client,
    con: Option<redis::Connection>,
    /// How long an operation keeps reconnecting before it fails.
    patience: Duration,
    /// Reconnections so far.
    pub reconnects: u64,
}

impl Link {
    /// Opens `url` (`redis://HOST:PORT/DB`) and checks that the server answers; an unreachable or
    /// malformed URL is one line naming it.
    pub fn open(url: &str, patience: Duration) -> Result<Self> {
        let client =
            redis::Client::open(url).map_err(|e| Error::input(format!("transport {url}: {e}")))?;
        let mut link = Link {
            url: url.to_string(),
            client,
            con: None,
            patience,
            reconnects: 0,
        };
        link.connect()
            .map_err(|e| Error::input(format!("transport {url}: cannot reach Redis: {e}")))?;
        Ok(link)
    }

    /// Another connection to the same server, as patient as this one.
    pub fn another(&self) -> Result<Link> {
        Link::open(&self.url, self.patience)
    }

    fn connect(&mut self) -> redis::RedisResult<()> {
        let mut con = self
            .client
            .get_connection_with_timeout(Duration::from_secs(2))?;
        let _: String = redis::cmd("PING").query(&mut con)?;
        self.con = Some(con);
        Ok(())
    }

    /// Runs `f` on the connection, reconnecting with backoff while Redis cannot be reached.
    /// Errors the server returns (a wrong type, a missing group) are not retried.
    pub fn run<T>(
        &mut self,
        mut f: impl FnMut(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T> {
        let start = Instant::now();
        let mut wait = Duration::from_millis(50);
        let mut said = false;
        loop {
            if self.con.is_none() {
                match self
                    .client
                    .get_connection_with_timeout(Duration::from_secs(2))
                {
                    Ok(con) => {
                        if said {
                            eprintln!("redis {}: reconnected", self.url);
                            self.reconnects += 1;
                        }
                        self.con = Some(con);
                    }
                    Err(e) => {
                        if start.elapsed() > self.patience {
                            return Err(Error::Corrupt(format!(
                                "redis {}: unreachable for {:.0} s: {e}",
                                self.url,
                                self.patience.as_secs_f64()
                            )));
                        }
                        if !said {
                            eprintln!("redis {}: connection lost ({e}); reconnecting", self.url);
                            said = true;
                        }
                        std::thread::sleep(wait);
                        wait = (wait * 2).min(Duration::from_secs(2));
                        continue;
                    }
                }
            }
            let con = self.con.as_mut().expect("connected above");
            match f(con) {
                Ok(v) => return Ok(v),
                Err(e) if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() => {
                    self.con = None;
                    if !said {
                        eprintln!("redis {}: connection lost ({e}); reconnecting", self.url);
                        said = true;
                    }
                }
                Err(e) => return Err(Error::Corrupt(format!("redis {}: {e}", self.url))),
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn text(v: &Value) -> String {
    bytes(v)
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default()
}

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
            cmd.arg("GROUP").arg(GROUP).arg(GROUP).arg("COUNT").arg(16);
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

/// The weights, chunked under versioned keys.
pub struct RedisBoard {
    link: Mutex<Link>,
    keys: RunKeys,
    chunk_bytes: usize,
    keep: usize,
    /// Versions this board published, oldest first (the learner's side deletes from it).
    published: Mutex<VecDeque<(u64, usize)>>,
    /// The last snapshot read (actors' side), so an unchanged version is not read again.
    cache: Mutex<Option<Arc<WeightSnapshot>>>,
    /// Weights as files in this shared directory instead of Redis values.
    dir: Option<std::path::PathBuf>,
    /// The newest snapshot this board published (the learner's side), to publish again into a
    /// Redis that restarted empty.
    last: Mutex<Option<WeightSnapshot>>,
}

impl RedisBoard {
    pub fn new(link: Link, keys: RunKeys, chunk_bytes: usize, keep: usize) -> Self {
        RedisBoard {
            link: Mutex::new(link),
            keys,
            chunk_bytes: chunk_bytes.max(1),
            keep: keep.max(1),
            published: Mutex::new(VecDeque::new()),
            cache: Mutex::new(None),
            dir: None,
            last: Mutex::new(None),
        }
    }

    /// Weights as one file per version in `dir` (a filesystem every host mounts); Redis carries
    /// only the version number.
    pub fn in_dir(mut self, dir: Option<std::path::PathBuf>) -> Self {
        self.dir = dir;
        self
    }

    /// Writes version `v` into the shared directory: a temporary file, then a rename.
    fn write_file(&self, dir: &std::path::Path, v: u64, body: &[u8]) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(self.keys.weights_file(v));
        let tmp = dir.join(format!(".{}.tmp", self.keys.weights_file(v)));
        std::fs::write(&tmp, body).map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))
    }

    /// Writes `snapshot` and deletes the versions past `keep`.
    pub fn try_publish(&self, snapshot: &WeightSnapshot) -> Result<()> {
        let body = encode_snapshot(snapshot);
        let v = snapshot.version;
        let chunks: Vec<&[u8]> = match &self.dir {
            Some(dir) => {
                self.write_file(dir, v, &body)?;
                Vec::new()
            }
            None => body.chunks(self.chunk_bytes).collect(),
        };
        let mut link = lock(&self.link);
        for (i, chunk) in chunks.iter().enumerate() {
            let key = self.keys.chunk(v, i);
            link.run(|c| redis::cmd("SET").arg(&key).arg(*chunk).query::<()>(c))?;
        }
        let (count_key, latest, versions) = (
            self.keys.chunks(v),
            self.keys.latest(),
            self.keys.versions(),
        );
        link.run(|c| {
            redis::pipe()
                .cmd("SET")
                .arg(&count_key)
                .arg(chunks.len())
                .ignore()
                .cmd("SET")
                .arg(&latest)
                .arg(v)
                .ignore()
                .cmd("XADD")
                .arg(&versions)
                .arg("MAXLEN")
                .arg("~")
                .arg(16)
                .arg("*")
                .arg("v")
                .arg(v)
                .ignore()
                .query::<()>(c)
        })?;
        let mut published = lock(&self.published);
        published.retain(|&(old, _)| old != v);
        published.push_back((v, chunks.len()));
        while published.len() > self.keep {
            let (old, n) = published.pop_front().expect("longer than keep");
            if let Some(dir) = &self.dir {
                let _ = std::fs::remove_file(dir.join(self.keys.weights_file(old)));
            }
            let mut doomed: Vec<String> = (0..n).map(|i| self.keys.chunk(old, i)).collect();
            doomed.push(self.keys.chunks(old));
            link.run(|c| redis::cmd("DEL").arg(&doomed).query::<()>(c))?;
        }
        Ok(())
    }

    /// The newest complete version's number, if any was published.
    pub fn try_version(&self) -> Result<Option<u64>> {
        let latest = self.keys.latest();
        lock(&self.link).run(|c| redis::cmd("GET").arg(&latest).query::<Option<u64>>(c))
    }

    /// The newest snapshot (read again only when its version changed).
    pub fn try_latest(&self) -> Result<Option<Arc<WeightSnapshot>>> {
        for _ in 0..10 {
            let Some(v) = self.try_version()? else {
                return Ok(None);
            };
            if let Some(snap) = lock(&self.cache).as_ref().filter(|s| s.version == v) {
                return Ok(Some(snap.clone()));
            }
            if let Some(dir) = &self.dir {
                let Ok(body) = std::fs::read(dir.join(self.keys.weights_file(v))) else {
                    continue; // deleted meanwhile: read the newer one
                };
                let snap = decode_snapshot(&body)
                    .map_err(|e| Error::Corrupt(format!("weights version {v}: {e}")))?;
                let snap = Arc::new(snap);
                *lock(&self.cache) = Some(snap.clone());
                return Ok(Some(snap));
            }
            let count_key = self.keys.chunks(v);
            let n: Option<usize> =
                lock(&self.link).run(|c| redis::cmd("GET").arg(&count_key).query(c))?;
            let Some(n) = n else { continue }; // deleted meanwhile: read the newer one
            let keys: Vec<String> = (0..n).map(|i| self.keys.chunk(v, i)).collect();
            let parts: Vec<Option<Vec<u8>>> = lock(&self.link).run(|c| {
                let mut p = redis::pipe();
                for k in &keys {
                    p.cmd("GET").arg(k);
                }
                p.query(c)
            })?;
            let Some(parts) = parts.into_iter().collect::<Option<Vec<_>>>() else {
                continue;
            };
            let snap = decode_snapshot(&parts.concat())
                .map_err(|e| Error::Corrupt(format!("weights version {v}: {e}")))?;
            let snap = Arc::new(snap);
            *lock(&self.cache) = Some(snap.clone());
            return Ok(Some(snap));
        }
        Err(Error::Corrupt(
            "the weights kept changing while being read".into(),
        ))
    }

    /// Publishes the newest snapshot again (after a Redis restart lost it). The shared
    /// directory's file, if any, is written again too.
    pub fn republish(&self) -> Result<()> {
        let last = lock(&self.last);
        let Some(snapshot) = last.as_ref() else {
            return Ok(());
        };
        self.try_publish(snapshot)
    }
}

impl WeightBoard for RedisBoard {
    fn publish(&self, snapshot: WeightSnapshot) {
        if let Err(e) = self.try_publish(&snapshot) {
            eprintln!("publishing weights version {}: {e}", snapshot.version);
        }
        *lock(&self.last) = Some(snapshot);
    }

    fn version(&self) -> u64 {
        self.try_version().ok().flatten().unwrap_or(0)
    }

    fn latest(&self) -> Arc<WeightSnapshot> {
        loop {
            match self.try_latest() {
                Ok(Some(s)) => return s,
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(e) => {
                    eprintln!("reading weights: {e}");
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }
}

/// Stop, failure and pacing shared through Redis by the learner and every actor process.
pub struct RedisControl {
    link: Mutex<Link>,
    keys: RunKeys,
    max_lag: u64,
    per_step: f64,
    /// Seen stopped (it never un-stops).
    stopped: std::sync::atomic::AtomicBool,
    /// The learner's side: its last `(step, needed)`, to write again after a Redis restart.
    position: Mutex<(u64, u64)>,
    /// The connection a paced actor blocks on (made on first use, so that blocking never holds
    /// up the others' calls on `link`).
    waiter: Mutex<Option<Link>>,
}

/// `XADD` of a notification to the run's `steps` stream into `p`.
fn notify(p: &mut redis::Pipeline, keys: &RunKeys, what: &str) {
    p.cmd("XADD")
        .arg(keys.steps())
        .arg("MAXLEN")
        .arg("~")
        .arg(16)
        .arg("*")
        .arg("e")
        .arg(what)
        .ignore();
}

impl RedisControl {
    pub fn new(link: Link, keys: RunKeys, max_lag: u64, per_step: f64) -> Self {
        RedisControl {
            link: Mutex::new(link),
            keys,
            max_lag,
            per_step,
            stopped: Default::default(),
            position: Mutex::new((0, 0)),
            waiter: Mutex::new(None),
        }
    }

    /// The learner's start: a fresh run state at `step`, `inserted` arrivals so far, `needed`
    /// for the next step.
    pub fn start_learner(&self, step: u64, inserted: u64, needed: u64) -> Result<()> {
        self.write_position(step, needed, Some(inserted), true, "start")
    }

    /// Writes the learner's position again into a Redis that restarted empty. The claims actors
    /// had in flight are lost with it: admission starts again from what the step needs, and the
    /// learner still drops anything that arrives too stale.
    pub fn restore_learner(&self) -> Result<()> {
        let (step, needed) = *lock(&self.position);
        self.write_position(step, needed, Some(needed), false, "restore")
    }

    /// The learner's side, in one round trip: its position `(step, needed)` (also kept here),
    /// the claim counter set to `claimed` when given, the stop flag and failure cleared when
    /// `fresh` (a new learner), and a `what` notification for paced actors.
    fn write_position(
        &self,
        step: u64,
        needed: u64,
        claimed: Option<u64>,
        fresh: bool,
        what: &str,
    ) -> Result<()> {
        *lock(&self.position) = (step, needed);
        let k = &self.keys;
        lock(&self.link).run(|c| {
            let mut p = redis::pipe();
            if fresh {
                p.cmd("DEL").arg(k.stop()).arg(k.failure()).ignore();
            }
            p.cmd("HSET")
                .arg(k.learner())
                .arg("step")
                .arg(step)
                .arg("needed")
                .arg(needed)
                .ignore();
            if let Some(n) = claimed {
                p.cmd("SET").arg(k.claimed()).arg(n).ignore();
            }
            notify(&mut p, k, what);
            p.query::<()>(c)
        })
    }

    fn learner_position(&self) -> Result<(u64, u64)> {
        let learner = self.keys.learner();
        let (step, needed): (Option<u64>, Option<u64>) = lock(&self.link).run(|c| {
            redis::cmd("HMGET")
                .arg(&learner)
                .arg("step")
                .arg("needed")
                .query(c)
        })?;
        Ok((step.unwrap_or(0), needed.unwrap_or(0)))
    }
}

impl RunControl for RedisControl {
    fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
        let stop = self.keys.stop();
        if let Err(e) = lock(&self.link).run(|c| {
            let mut p = redis::pipe();
            p.cmd("SET").arg(&stop).arg(1).ignore();
            notify(&mut p, &self.keys, "stop");
            p.query::<()>(c)
        }) {
            eprintln!("{e}");
        }
    }

    fn stopped(&self) -> bool {
        if self.stopped.load(Ordering::Relaxed) {
            return true;
        }
        let stop = self.keys.stop();
        let now = lock(&self.link)
            .run(|c| redis::cmd("EXISTS").arg(&stop).query::<bool>(c))
            .unwrap_or(true);
        if now {
            self.stopped.store(true, Ordering::Relaxed);
        }
        now
    }

    fn fail(&self, error: Error) {
        let failure = self.keys.failure();
        let message = error.to_string();
        let _ = lock(&self.link).run(|c| {
            redis::cmd("SET")
                .arg(&failure)
                .arg(&message)
                .arg("NX")
                .query::<()>(c)
        });
        self.stop();
    }

    fn take_failure(&self) -> Option<Error> {
        let failure = self.keys.failure();
        let message: Option<String> = lock(&self.link)
            .run(|c| redis::cmd("GETDEL").arg(&failure).query(c))
            .ok()
            .flatten();
        message.map(Error::Corrupt)
    }

    fn learner_advanced(&self, step: u64, needed: u64) {
        if let Err(e) = self.write_position(step, needed, None, false, "step") {
            eprintln!("{e}");
        }
    }

    fn try_claim(&self, version: u64, n: u64) -> bool {
        if self.max_lag == 0 {
            return true;
        }
        let Ok((step, needed)) = self.learner_position() else {
            return false;
        };
        let limit = super::admission_limit(needed, step, self.per_step, version, self.max_lag);
        let claimed = self.keys.claimed();
        let mut link = lock(&self.link);
        let Ok(after) = link.run(|c| redis::cmd("INCRBY").arg(&claimed).arg(n).query::<u64>(c))
        else {
            return false;
        };
        let before = after - n;
        if after <= limit || before < needed {
            return true;
        }
        let _ = link.run(|c| redis::cmd("DECRBY").arg(&claimed).arg(n).query::<()>(c));
        false
    }

    /// Blocks on the run's `steps` stream (`XREAD BLOCK`) until the learner steps or stops,
    /// or `timeout` passes: no polling.
    fn wait_for_learner(&self, timeout: Duration) {
        if self.stopped.load(Ordering::Relaxed) {
            return;
        }
        let mut waiter = lock(&self.waiter);
        if waiter.is_none() {
            *waiter = lock(&self.link).another().ok();
        }
        let Some(link) = waiter.as_mut() else {
            std::thread::sleep(timeout.min(Duration::from_millis(10)));
            return;
        };
        let steps = self.keys.steps();
        let ms = timeout.as_millis().max(1) as u64;
        let waited = link.run(|c| {
            // The newest notification, then wait for one after it.
            let last: Value = redis::cmd("XREVRANGE")
                .arg(&steps)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query(c)?;
            let id = match &last {
                Value::Array(entries) => match entries.first() {
                    Some(Value::Array(entry)) => entry.first().map(text),
                    _ => None,
                },
                _ => None,
            }
            .unwrap_or_else(|| "0-0".into());
            redis::cmd("XREAD")
                .arg("COUNT")
                .arg(1)
                .arg("BLOCK")
                .arg(ms)
                .arg("STREAMS")
                .arg(&steps)
                .arg(&id)
                .query::<Value>(c)
        });
        if waited.is_err() {
            std::thread::sleep(timeout.min(Duration::from_millis(10)));
        }
    }
}

/// A `redis-server` of our own on a free loopback port (benchmarks), stopped when dropped.
pub struct LocalServer {
    pub port: u16,
    child: std::process::Child,
}

impl LocalServer {
    /// A server on a free loopback port.
    pub fn start() -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| Error::io("a free port", e))?
            .port();
        LocalServer::on(port)
    }

    /// A server on `port` (a restart on the same port, say), once it answers.
    pub fn on(port: u16) -> Result<Self> {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .map_err(|e| {
                Error::input(format!(
                    "cannot start redis-server ({e}); scripts/setup.sh installs it"
                ))
            })?;
        let server = LocalServer { port, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Link::open(&server.url(), Duration::ZERO).is_err() {
            if Instant::now() > deadline {
                return Err(Error::Corrupt("redis-server did not start".into()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ids::SourceId;
    use crate::policy::NamedTensor;
    use crate::trajectory::Trajectory;

    /// A `redis-server` of the test's own on a free loopback port, stopped when dropped.
    pub(crate) struct Server(LocalServer);

    impl Server {
        pub fn start() -> Self {
            Server(LocalServer::start().unwrap())
        }

        pub fn on(port: u16) -> Self {
            Server(LocalServer::on(port).unwrap())
        }

        pub fn port(&self) -> u16 {
            self.0.port
        }

        pub fn url(&self) -> String {
            self.0.url()
        }

        pub fn link(&self) -> Link {
            Link::open(&self.url(), Duration::from_secs(20)).unwrap()
        }

        pub fn kill(self) {
            drop(self.0);
        }
    }

    fn batch(actor: usize, n: usize) -> ActorBatch {
        ActorBatch {
            actor,
            trajectories: (0..n)
                .map(|i| {
                    Trajectory::synthetic(
                        SourceId::new(0, actor as u32, 0).prompt(i as u64, 0),
                        vec![1, 2, 3, i as u32],
                        2,
                        -0.5,
                        i as f32,
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn batches_go_through_the_stream_in_order_and_bad_ones_are_skipped() {
        let server = Server::start();
        let keys = RunKeys::new("t1");
        let source = RedisSource::new(server.link(), keys.clone()).unwrap();
        let sink = RedisSink::new(server.link(), keys.clone(), 8, "host-a/0");
        for i in 0..3 {
            sink.send(batch(i, i + 1)).unwrap();
        }
        sink.send_bytes(b"not a batch").unwrap();
        sink.send(batch(7, 2)).unwrap();
        let mut got = Vec::new();
        while let Some(b) = source.recv(Duration::from_millis(200)).unwrap() {
            got.push(b);
        }
        let ids: Vec<usize> = got.iter().map(|b| b.actor).collect();
        assert_eq!(ids, [0, 1, 2, 7]);
        assert_eq!(got[2].trajectories, batch(2, 3).trajectories);
        assert_eq!(source.undecodable.load(Ordering::Relaxed), 1);
        // What was taken is gone from Redis: the stream holds only what waits.
        let mut link = server.link();
        let len: usize = link
            .run(|c| redis::cmd("XLEN").arg(keys.trajectories()).query(c))
            .unwrap();
        assert_eq!(len, 0);
    }

    #[test]
    fn a_full_stream_holds_the_actor_until_the_learner_takes() {
        let server = Server::start();
        let keys = RunKeys::new("t2");
        let source = RedisSource::new(server.link(), keys.clone()).unwrap();
        let sink = Arc::new(RedisSink::new(server.link(), keys.clone(), 2, "a"));
        let sent = Arc::new(AtomicU64::new(0));
        let (s, n) = (sink.clone(), sent.clone());
        let actor = std::thread::spawn(move || {
            for i in 0..5 {
                s.send(batch(i, 1)).unwrap();
                n.fetch_add(1, Ordering::SeqCst);
            }
        });
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            sent.load(Ordering::SeqCst),
            2,
            "two queued, the third waits"
        );
        let mut got = 0;
        while got < 5 {
            if source.recv(Duration::from_millis(500)).unwrap().is_some() {
                got += 1;
            }
        }
        actor.join().unwrap();
        assert_eq!(sent.load(Ordering::SeqCst), 5);
    }

    /// With nobody reading (a learner gone for a while) and senders that do not wait, the
    /// stream, and so Redis's memory, stays bounded by `maxlen`.
    #[test]
    fn the_stream_is_bounded_by_maxlen() {
        let server = Server::start();
        let keys = RunKeys::new("t6");
        let mut link = server.link();
        let used = |link: &mut Link| -> u64 {
            let info: String = link
                .run(|c| redis::cmd("INFO").arg("memory").query(c))
                .unwrap();
            info.lines()
                .find_map(|l| l.strip_prefix("used_memory:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap()
        };
        let before = used(&mut link);
        let sink = RedisSink::new(server.link(), keys.clone(), 100_000, "a").with_maxlen(50);
        let message = vec![7u8; 20_000];
        for _ in 0..1000 {
            sink.send_bytes(&message).unwrap();
        }
        let stream = keys.trajectories();
        let len: usize = link
            .run(|c| redis::cmd("XLEN").arg(&stream).query(c))
            .unwrap();
        // `MAXLEN ~` trims whole nodes of the stream (100 entries by default).
        assert!((50..=150).contains(&len), "{len} messages kept");
        let grown = used(&mut link).saturating_sub(before);
        assert!(
            grown < 150 * 20_000 * 2,
            "Redis grew by {grown} bytes for 1000 messages of 20 kB"
        );
    }

    #[test]
    fn weights_go_in_chunks_and_old_versions_are_deleted() {
        let server = Server::start();
        let keys = RunKeys::new("t3");
        let learner = RedisBoard::new(server.link(), keys.clone(), 100, 2);
        let actor = RedisBoard::new(server.link(), keys.clone(), 100, 2);
        assert!(actor.try_latest().unwrap().is_none());
        let snap = |v: u64| WeightSnapshot {
            version: v,
            tensors: vec![NamedTensor {
                name: "w".into(),
                shape: vec![10, 20],
                data: (0..200).map(|i| i as f32 * 0.5 + v as f32).collect(),
            }],
        };
        for v in [1, 2, 3, 4] {
            learner.publish(snap(v));
            let got = actor.latest();
            assert_eq!(got.version, v);
            assert_eq!(got.tensors[0].data, snap(v).tensors[0].data);
        }
        // 200 values are 800 bytes plus the header: 9 chunks a version, 2 versions kept.
        let mut link = server.link();
        let stored: Vec<String> = link
            .run(|c| redis::cmd("KEYS").arg("asymre:t3:weights:*").query(c))
            .unwrap();
        assert_eq!(stored.len(), 2 * (9 + 1), "{stored:?}");
        assert!(stored.iter().all(|k| k.contains(":3") || k.contains(":4")));
    }

    #[test]
    fn weights_can_go_through_a_shared_directory() {
        let server = Server::start();
        let dir = tempfile::tempdir().unwrap();
        let keys = RunKeys::new("t6");
        let shared = Some(dir.path().to_path_buf());
        let learner = RedisBoard::new(server.link(), keys.clone(), 100, 2).in_dir(shared.clone());
        let actor = RedisBoard::new(server.link(), keys.clone(), 100, 2).in_dir(shared);
        for v in [1, 2, 3] {
            learner.publish(WeightSnapshot {
                version: v,
                tensors: vec![NamedTensor {
                    name: "w".into(),
                    shape: vec![300],
                    data: vec![v as f32; 300],
                }],
            });
            let got = actor.latest();
            assert_eq!((got.version, got.tensors[0].data[299]), (v, v as f32));
        }
        let mut files: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert_eq!(
            files,
            ["asymre-t6-weights-2.bin", "asymre-t6-weights-3.bin"]
        );
        // Redis holds the version only, no chunk.
        let mut link = server.link();
        let chunks: Vec<String> = link
            .run(|c| redis::cmd("KEYS").arg("asymre:t6:weights:*:*").query(c))
            .unwrap();
        assert!(chunks.is_empty(), "{chunks:?}");
    }

    #[test]
    fn stop_failure_and_pacing_are_shared() {
        let server = Server::start();
        let keys = RunKeys::new("t4");
        let learner = RedisControl::new(server.link(), keys.clone(), 2, 4.0);
        let actor = RedisControl::new(server.link(), keys.clone(), 2, 4.0);
        learner.start_learner(0, 0, 4).unwrap();
        assert!(!actor.stopped());
        // Version 0 may fill the next 2 steps past the first: 4 + 2 × 4 = 12 samples.
        assert!(actor.try_claim(0, 8));
        assert!(actor.try_claim(0, 4));
        assert!(!actor.try_claim(0, 4), "past the lag limit");
        // The learner steps: version 0 is no fresher, version 1 may fill up to 8 + 2 × 4.
        learner.learner_advanced(1, 8);
        assert!(!actor.try_claim(0, 4));
        assert!(actor.try_claim(1, 4));
        assert!(!actor.try_claim(1, 1));
        // A paced actor blocks until the learner steps (a notification, not the timeout)...
        // (Notified again every 300 ms until it wakes: a waiter that only began after a
        // notification waits for the next one.)
        let woke = |after: &dyn Fn()| {
            std::thread::scope(|scope| {
                let waiting = scope.spawn(|| {
                    let t = Instant::now();
                    actor.wait_for_learner(Duration::from_secs(30));
                    t.elapsed()
                });
                while !waiting.is_finished() {
                    std::thread::sleep(Duration::from_millis(300));
                    after();
                }
                waiting.join().unwrap()
            })
        };
        let waited = woke(&|| learner.learner_advanced(2, 12));
        assert!(waited >= Duration::from_millis(250), "{waited:?}");
        assert!(waited < Duration::from_secs(20), "{waited:?}");
        // ... or stops.
        let other = RedisControl::new(server.link(), keys.clone(), 2, 4.0);
        let waited = woke(&|| other.stop());
        assert!(waited < Duration::from_secs(20), "{waited:?}");
        assert!(actor.stopped());
        actor.fail(Error::Corrupt("actor 3 broke".into()));
        assert!(learner.stopped());
        assert!(learner
            .take_failure()
            .unwrap()
            .to_string()
            .contains("actor 3 broke"));
        assert!(learner.take_failure().is_none());
    }

    #[test]
    fn a_restarted_redis_is_reconnected_to() {
        let server = Server::start();
        let port = server.port();
        let keys = RunKeys::new("t5");
        let source = RedisSource::new(server.link(), keys.clone()).unwrap();
        let sink = RedisSink::new(server.link(), keys.clone(), 8, "a");
        sink.send(batch(1, 1)).unwrap();
        assert!(source.recv(Duration::from_millis(500)).unwrap().is_some());
        server.kill();
        let restarted = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            Server::on(port)
        });
        // The send waits for the server, then goes through; the new server has no group yet,
        // so the learner's side makes it again and reads what was sent before it did.
        sink.send(batch(2, 1)).unwrap();
        let _server = restarted.join().unwrap();
        let got = source.recv(Duration::from_secs(2)).unwrap().unwrap();
        assert_eq!(got.actor, 2);
        assert!(lock(&sink.link).reconnects >= 1);
    }

    #[test]
    fn an_unreachable_url_is_one_line() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = Link::open(&format!("redis://127.0.0.1:{port}/0"), Duration::ZERO)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("cannot reach Redis") && !err.contains('\n'),
            "{err}"
        );
        let err = Link::open("http://nowhere", Duration::ZERO)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("http://nowhere"), "{err}");
    }
}
