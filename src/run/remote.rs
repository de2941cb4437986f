//! Runs whose actors may live on other hosts (SPEC §4.3): the learner's side of
//! `asymre train --transport redis://…`, and `asymre actor`, which joins a run from any host.
//!
//! The learner publishes the run under its name (the run directory's name): the resolved config,
//! its session and the first weights; then its own actor threads (`actor.threads`, possibly 0)
//! and any actor process that joins send through Redis, and the learner reads through it. Actor
//! ids are handed out by Redis (local actors take the first ones), so prompt ids never collide.
//! The learner owns versions and staleness exactly as in one process.
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::kinds;
use super::options::RunOptions;
use super::parallel::{threads, ActorFactory};
use super::sampled::SampledRun;
use crate::config::DeviceChoice;
use crate::device::resolve_device;
use crate::error::{Error, Result};
use crate::ids::SourceId;
use crate::rl::actor::{actor_loop, Actor, ActorLinks};
use crate::transport::redis::{
    self as rds, Gauges, Link, RedisBoard, RedisControl, RedisSink, RedisSource, RunKeys,
};
use crate::transport::{RunControl, TrajectorySink};

/// How long an operation keeps reconnecting to a Redis that went away.
const PATIENCE: Duration = Duration::from_secs(120);
/// Weight chunks: 4 MiB values.
const CHUNK_BYTES: usize = 4 << 20;
/// Weight versions kept in Redis.
const KEEP_VERSIONS: usize = 2;

/// Who is sending: `host/actor id`, named when a message does not decode.
fn sender(id: usize) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    format!("{host}/{id}")
}

/// The run's weights as `cfg` keeps them: chunks in Redis, or files in the shared directory of
/// `transport.weights`.
fn weight_board(link: Link, keys: &RunKeys, cfg: &crate::config::Config) -> RedisBoard {
    let shared = cfg.transport.weights_dir().unwrap_or(None);
    RedisBoard::new(link, keys.clone(), CHUNK_BYTES, KEEP_VERSIONS).in_dir(shared)
}

/// Actor `id`'s end of the trajectory stream, with the run's back-pressure and bound.
fn actor_sink(link: Link, keys: &RunKeys, cfg: &crate::config::Config, id: usize) -> RedisSink {
    RedisSink::new(link, keys.clone(), cfg.actor.channel_capacity, &sender(id))
        .with_maxlen(cfg.transport.maxlen)
}

/// What the learner publishes of its run for actor processes to join it.
struct Published<'a> {
    keys: &'a RunKeys,
    config: String,
    session: u32,
}

impl Published<'_> {
    /// Writes the session, the next free actor id and, last (actors wait for it), the config.
    fn write(&self, link: &mut Link, next_id: usize) -> Result<()> {
        let k = self.keys;
        let (config, session, ids) = (k.config(), k.session(), k.actor_ids());
        link.run(|c| {
            redis::pipe()
                .cmd("SET")
                .arg(&session)
                .arg(self.session)
                .ignore()
                .cmd("SET")
                .arg(&ids)
                .arg(next_id)
                .ignore()
                .cmd("SET")
                .arg(&config)
                .arg(&self.config)
                .ignore()
                .query::<()>(c)
        })
    }

    /// The next free actor id, or none when the run is gone from Redis.
    fn check(&self, link: &mut Link) -> Result<Option<usize>> {
        let (config, ids) = (self.keys.config(), self.keys.actor_ids());
        let (there, next): (bool, Option<usize>) = link.run(|c| {
            redis::pipe()
                .cmd("EXISTS")
                .arg(&config)
                .cmd("GET")
                .arg(&ids)
                .query(c)
        })?;
        Ok(there.then(|| next.unwrap_or(0)))
    }
}

/// The learner's side of a run through Redis at `url`, named `name`.
pub(super) fn redis_loop(
    run: &mut SampledRun,
    actors: Vec<Box<dyn Actor>>,
    factory: &ActorFactory,
    opts: &RunOptions,
    url: &str,
    name: &str,
) -> Result<Option<i32>> {
    let keys = RunKeys::new(name);
    let link = || Link::open(url, PATIENCE);
    let mut meta = link()?;
    let (text, fresh) = (run.cfg.to_toml(), run.learner.step() == 0);
    if fresh {
        // A new run under an old name starts from an empty stream.
        let stream = keys.trajectories();
        meta.run(|c| redis::cmd("DEL").arg(&stream).query::<()>(c))?;
    }
    let published = Published {
        keys: &keys,
        config: text,
        session: run.session,
    };
    published.write(&mut meta, actors.len())?;
    let board = weight_board(link()?, &keys, run.cfg);
    board.try_publish(&run.behaviour)?;
    let control = RedisControl::new(
        link()?,
        keys.clone(),
        run.cfg.replay.max_policy_lag,
        run.learner.replay().per_step(),
    );
    control.start_learner(
        run.learner.step(),
        run.learner.replay().inserted(),
        run.learner.replay().needed(run.learner.step()),
    )?;
    let source = RedisSource::new(link()?, keys.clone())?;
    let sinks = actors
        .iter()
        .map(|a| {
            let sink = actor_sink(link()?, &keys, run.cfg, a.id());
            Ok(Box::new(sink) as Box<dyn TrajectorySink>)
        })
        .collect::<Result<Vec<_>>>()?;
    eprintln!("run {name} on {url}: join with `asymre actor --transport {url} --run {name}`");
    let local = actors.len();
    let alive = Arc::new(std::sync::atomic::AtomicU64::new(0));
    run.remote = Some(Gauges {
        alive: alive.clone(),
        undecodable: source.undecodable.clone(),
    });
    let done = std::sync::atomic::AtomicBool::new(false);
    let mut watch = link()?;
    std::thread::scope(|scope| {
        // Actor processes' heartbeats: who joined, who left, who was lost. And a Redis that
        // restarted empty gets the run again: config, ids, the learner's position, the weights.
        let monitor = scope.spawn(|| {
            let watched = Watched {
                published: &published,
                control: &control,
                board: &board,
                local,
                alive: &alive,
            };
            watched.monitor(&mut watch, &done, url, name)
        });
        let result = threads(
            run,
            actors,
            factory,
            opts,
            sinks,
            Box::new(source),
            &board,
            &control,
        );
        done.store(true, Ordering::Relaxed);
        let _ = monitor.join();
        result
    })
}

/// What the learner's monitor thread watches in Redis.
struct Watched<'a> {
    published: &'a Published<'a>,
    control: &'a RedisControl,
    board: &'a RedisBoard,
    /// Actor threads of the learner's own process (they take the first ids).
    local: usize,
    /// Actor processes whose heartbeat is alive, for the rows.
    alive: &'a std::sync::atomic::AtomicU64,
}

impl Watched<'_> {
    /// Every second until `done`: reports actor processes that join, leave or are lost (by
    /// their heartbeats), and publishes the run again when Redis restarted empty (config, ids,
    /// the learner's position, the weights).
    fn monitor(
        &self,
        watch: &mut Link,
        done: &std::sync::atomic::AtomicBool,
        url: &str,
        name: &str,
    ) {
        let keys = self.published.keys;
        let mut known = std::collections::BTreeMap::<usize, String>::new();
        let mut ids_seen = 0;
        let mut grace = Instant::now();
        while !done.load(Ordering::Relaxed) {
            match self.published.check(watch) {
                Ok(Some(ids)) => ids_seen = ids_seen.max(ids),
                Ok(None) if !self.control.stopped() => {
                    let next = known.keys().next_back().map_or(0, |&id| id + 1);
                    let restored = self
                        .published
                        .write(watch, ids_seen.max(next).max(self.local))
                        .and_then(|()| self.control.restore_learner())
                        .and_then(|()| self.board.republish());
                    match restored {
                        Ok(()) => eprintln!(
                            "run {name} was gone from {url} (Redis restarted?): published it again"
                        ),
                        Err(e) => eprintln!("publishing run {name} again: {e}"),
                    }
                    // Heartbeats come back within a second or two: nobody is lost meanwhile.
                    grace = Instant::now() + Duration::from_secs(3);
                }
                _ => {}
            }
            if let Ok(mut now) = rds::alive(watch, keys) {
                if Instant::now() < grace {
                    for (id, who) in &known {
                        now.entry(*id).or_insert_with(|| who.clone());
                    }
                }
                report_changes(&known, &now);
                self.alive.store(now.len() as u64, Ordering::Relaxed);
                known = now;
            }
            rds::sleep_unless(&|| done.load(Ordering::Relaxed), Duration::from_secs(1));
        }
    }
}

/// Says which actor processes joined and which left or were lost between `before` and `now`.
fn report_changes(
    before: &std::collections::BTreeMap<usize, String>,
    now: &std::collections::BTreeMap<usize, String>,
) {
    for (id, who) in now {
        if !before.contains_key(id) {
            eprintln!("actor {id} ({who}) joined");
        }
    }
    for (id, who) in before {
        if !now.contains_key(id) {
            eprintln!(
                "actor {id} ({who}) left or was lost (no heartbeat for {} s)",
                rds::HEARTBEAT_TTL.as_secs()
            );
        }
    }
}

/// `asymre actor`: joins run `name` at `url` with `threads` actor threads and sends until the
/// run ends. Waits for the run to be published when it is not yet.
pub fn remote_actors(
    url: &str,
    name: &str,
    threads: usize,
    device: Option<DeviceChoice>,
) -> Result<()> {
    let keys = RunKeys::new(name);
    let link = || Link::open(url, PATIENCE);
    let mut meta = link()?;
    let (config, session) = (keys.config(), keys.session());
    let started = Instant::now();
    let (text, session) = loop {
        let (text, session): (Option<String>, Option<u32>) = meta.run(|c| {
            redis::pipe()
                .cmd("GET")
                .arg(&config)
                .cmd("GET")
                .arg(&session)
                .query(c)
        })?;
        if let (Some(t), Some(s)) = (text, session) {
            break (t, s);
        }
        if started.elapsed() < Duration::from_millis(500) {
            eprintln!("waiting for run {name:?} to start at {url}");
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    let mut cfg = crate::config::from_toml_str(&text, &[])
        .map_err(|e| Error::Corrupt(format!("run {name}'s config in Redis: {e}")))?;
    if let Some(d) = device {
        cfg.actor.device = d;
    }
    resolve_device(cfg.actor.device).map_err(|e| Error::input(format!("actor.{e}")))?;
    let ids = keys.actor_ids();
    let last: usize = meta.run(|c| redis::cmd("INCRBY").arg(&ids).arg(threads).query(c))?;
    let first = last - threads;
    let build = kinds::runner(&cfg, None)?.actors();
    let board = weight_board(link()?, &keys, &cfg);
    let control = RedisControl::new(
        link()?,
        keys.clone(),
        cfg.replay.max_policy_lag,
        crate::rl::replay::per_step(cfg.learner.batch_size, cfg.replay.reuse),
    );
    let behaviour = crate::transport::WeightBoard::latest(&board);
    eprintln!(
        "joined run {name} as actor(s) {first}..{last} (session {session}, weights version {})",
        behaviour.version
    );
    let named: Vec<(usize, String)> = (first..last).map(|id| (id, sender(id))).collect();
    let mut beat = link()?;
    std::thread::scope(|scope| {
        let (control_ref, keys_ref) = (&control, &keys);
        let heart = scope
            .spawn(move || rds::heartbeat(&mut beat, keys_ref, &named, &|| control_ref.stopped()));
        let mut handles = Vec::new();
        for id in first..last {
            let actor = build(&cfg, SourceId::new(session, id as u32, 0), &behaviour)?;
            let sink = actor_sink(link()?, &keys, &cfg, id);
            let (board, control) = (&board, &control);
            handles.push(scope.spawn(move || {
                actor_loop(
                    actor,
                    ActorLinks {
                        sink: &sink,
                        board,
                        control,
                        panic_after: 0,
                        delay: Duration::from_millis(cfg.faults.actor_delay_ms),
                    },
                )
            }));
        }
        let mut result = Ok(());
        for h in handles {
            let r = h
                .join()
                .unwrap_or_else(|_| Err(Error::Corrupt("an actor thread panicked".into())));
            if let Err(e) = r {
                control.fail(Error::Corrupt(format!("actor process: {e}")));
                result = Err(e);
            }
        }
        if let Ok(Err(e)) = heart.join() {
            eprintln!("heartbeat: {e}");
        }
        result
    })?;
    eprintln!("run {name} stopped; actor(s) {first}..{last} leave");
    Ok(())
}
