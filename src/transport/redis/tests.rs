//! The Redis transport against a real `redis-server` of the tests' own.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::super::{RunControl, TrajectorySink, WeightBoard};
use super::*;
use crate::error::Error;
use crate::ids::SourceId;
use crate::policy::{NamedTensor, WeightSnapshot};
use crate::trajectory::{ActorBatch, Trajectory};

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
    // Two go in (however slow the machine), then the third waits.
    let t0 = std::time::Instant::now();
    while sent.load(Ordering::SeqCst) < 2 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the first two never went in"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
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
        }]
        .into(),
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
            }]
            .into(),
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
    assert!(sink.reconnects() >= 1);
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
