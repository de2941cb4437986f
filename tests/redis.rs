//! Actors in other processes through Redis (`train --transport`, `asymre actor`), against a real
//! `redis-server` the test starts on a free loopback port (scripts/setup.sh installs it).
mod common;

use std::ffi::OsStr;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use asymre::transport::redis::{Link, LocalServer, RunKeys};
use common::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `redis-server` of the test's own on a free loopback port, stopped when dropped.
fn server() -> LocalServer {
    LocalServer::start().unwrap()
}

/// The shared test run with no actor of the learner's own, its learner slowed by `delay_ms` per
/// step: 80 steps, a row every 2.
fn remote_only(delay_ms: u64) -> String {
    TINY_TOOL
        .replace("rounds = 2\n", "rounds = 16\n")
        .replace("threads = 2\n", "threads = 0\n")
        .replace("every = 5\neval_every = 5", "every = 2\neval_every = 0")
        + &format!("[faults]\nlearner_delay_ms = {delay_ms}\n")
}

fn rows(run: &Path) -> Vec<serde_json::Map<String, serde_json::Value>> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn actors_in(row: &serde_json::Map<String, serde_json::Value>) -> Option<f64> {
    row.get("actors").and_then(|v| v.as_f64())
}

fn wait(child: &mut Child, secs: u64) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The highest step the run's metrics show so far.
fn last_step(run: &Path) -> Option<u64> {
    rows(run).iter().filter_map(|r| r["step"].as_u64()).max()
}

/// `asymre ARGS… --transport URL`, its stderr kept for the test's messages.
fn spawn_with(args: &[&OsStr], url: &str) -> Child {
    bin()
        .args(args)
        .args(["--transport", url])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// A learner training `cfg` into `run` through Redis at `url`.
fn learner(cfg: &Path, run: &Path, url: &str) -> Child {
    let args = [
        "train".as_ref(),
        "--config".as_ref(),
        cfg.as_os_str(),
        "--out".as_ref(),
        run.as_os_str(),
    ];
    spawn_with(&args, url)
}

/// An actor process joining run `name` at `url`.
fn actor(url: &str, name: &str) -> Child {
    spawn_with(&["actor".as_ref(), "--run".as_ref(), name.as_ref()], url)
}

fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut s);
    }
    s
}

/// Polls until `done` holds; fails, with the run's last row and the learner's stderr, when the
/// learner exits first or 120 s pass.
fn wait_until(learner: &mut Child, run: &Path, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !done() {
        assert!(
            Instant::now() < deadline,
            "no {what} in 120 s: {:?}\n{}",
            rows(run).last(),
            stderr_of(learner)
        );
        assert!(
            learner.try_wait().unwrap().is_none(),
            "the learner exited before {what}: {:?}\n{}",
            rows(run).last(),
            stderr_of(learner)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A learner with no actor of its own and two actor processes: both send, one is SIGKILLed,
/// the run finishes on the other, which then leaves by itself.
#[test]
fn a_learner_and_two_actor_processes_finish_a_run_when_one_is_killed() {
    let server = server();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(tmp.path(), &remote_only(200));
    let run = tmp.path().join("shared_run");
    let url = server.url();
    let mut learner = learner(&cfg, &run, &url);
    let (mut a, mut b) = (actor(&url, "shared_run"), actor(&url, "shared_run"));
    // Both send.
    wait_until(&mut learner, &run, "row from both actors", || {
        rows(&run).iter().any(|r| actors_in(r) == Some(2.0))
    });
    a.kill().unwrap();
    let _ = a.wait();
    // A message that does not decode, from a sender of its own: counted, named and skipped.
    let mut link = Link::open(&url, Duration::from_secs(5)).unwrap();
    let stream = RunKeys::new("shared_run").trajectories();
    link.run(|c| {
        redis::cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg("b")
            .arg(&b"ASYB\x01\x00garbage"[..])
            .arg("a")
            .arg("intruder/9")
            .query::<String>(c)
    })
    .unwrap();
    let status = wait(&mut learner, 300);
    let log = stderr_of(&mut learner);
    assert!(status.is_some_and(|s| s.success()), "{log}");
    assert!(
        log.contains("skipped a message from actor \"intruder/9\" that does not decode"),
        "{log}"
    );
    assert!(run.join("summary.json").exists(), "{log}");
    assert_eq!(last_step(&run), Some(80), "{log}");
    let all = rows(&run);
    // Once what the killed actor had queued is used up, rows come from one actor only.
    let later: Vec<f64> = all.iter().filter_map(actors_in).collect();
    let tail = &later[later.len().saturating_sub(5)..];
    assert!(
        tail.len() == 5 && tail.iter().all(|&n| n == 1.0),
        "{later:?}"
    );
    // Heartbeats: both joined, the killed one was lost once its heartbeat expired.
    assert_eq!(log.matches(") joined").count(), 2, "{log}");
    assert!(log.contains("was lost (no heartbeat for 10 s)"), "{log}");
    let alive: Vec<f64> = all
        .iter()
        .filter_map(|r| r.get("actors_alive")?.as_f64())
        .collect();
    assert!(
        alive.contains(&2.0) && alive.last() == Some(&1.0),
        "{alive:?}"
    );
    let skipped: Vec<f64> = all
        .iter()
        .filter_map(|r| r.get("messages_undecodable")?.as_f64())
        .collect();
    assert_eq!(skipped.last(), Some(&1.0), "{skipped:?}");
    // The survivor leaves once the run has stopped.
    let status = wait(&mut b, 60);
    let blog = stderr_of(&mut b);
    assert!(status.is_some_and(|s| s.success()), "{blog}");
    assert!(blog.contains("joined run shared_run"), "{blog}");
    assert!(blog.contains("stopped"), "{blog}");
}

/// An unreachable Redis is one line and exit 2, before anything is written.
#[test]
fn an_unreachable_transport_is_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(tmp.path(), TINY_TOOL);
    let run = tmp.path().join("r");
    let url = format!("redis://127.0.0.1:{}/0", free_port());
    let out = train(&cfg, &run, &["--transport", &url]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("cannot reach Redis") && err.trim().lines().count() == 1,
        "{err}"
    );
    assert!(!run.exists());
    let out = bin()
        .args(["actor", "--transport", &url, "--run", "r"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    // Without a transport, a learner with no actor of its own is refused.
    let cfg = write_config(
        tmp.path(),
        &TINY_TOOL.replace("threads = 2\n", "threads = 0\n"),
    );
    let out = train(&cfg, &run, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("needs --transport"), "{err}");
    assert!(!run.exists());
}

/// The learner SIGKILLed mid-run and resumed: the actor process waits for it and continues,
/// and the run finishes.
#[test]
fn a_killed_learner_resumes_and_its_actor_process_continues() {
    let server = server();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(tmp.path(), &remote_only(30));
    let run = tmp.path().join("again");
    let url = server.url();
    let mut learner = learner(&cfg, &run, &url);
    let mut actor = actor(&url, "again");
    // Killed after its first checkpoint (step 5).
    wait_until(&mut learner, &run, "checkpoint", || {
        run.join("checkpoints").join("latest").exists()
    });
    learner.kill().unwrap();
    let _ = learner.wait();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        actor.try_wait().unwrap().is_none(),
        "the actor waits for the learner"
    );
    let mut resumed = spawn_with(&["resume".as_ref(), run.as_os_str()], &url);
    let status = wait(&mut resumed, 300);
    let log = stderr_of(&mut resumed);
    assert!(status.is_some_and(|s| s.success()), "{log}");
    assert_eq!(last_step(&run), Some(80), "{log}");
    let status = wait(&mut actor, 60);
    let alog = stderr_of(&mut actor);
    assert!(status.is_some_and(|s| s.success()), "{alog}");
}

/// Redis itself restarted mid-run, empty: the learner and the actor process reconnect and say
/// so, the learner publishes the run again (config, weights, its position, the consumer group),
/// and the run finishes.
#[test]
fn a_redis_restarted_mid_run_is_reconnected_to_and_the_run_finishes() {
    let server = server();
    let port = server.port;
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(tmp.path(), &remote_only(30));
    let run = tmp.path().join("restarted");
    let url = server.url();
    let mut learner = learner(&cfg, &run, &url);
    let mut actor = actor(&url, "restarted");
    wait_until(&mut learner, &run, "step 10", || {
        last_step(&run).unwrap_or(0) >= 10
    });
    drop(server);
    let at_restart = last_step(&run).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let _server = LocalServer::on(port).unwrap();
    let status = wait(&mut learner, 300);
    let log = stderr_of(&mut learner);
    assert!(status.is_some_and(|s| s.success()), "{log}");
    assert_eq!(last_step(&run), Some(80), "{log}");
    assert!(at_restart < 80);
    assert!(
        log.contains("connection lost") && log.contains("reconnected"),
        "{log}"
    );
    assert!(log.contains("published it again"), "{log}");
    // Steps after the restart were trained on the actor's samples (the only actor there is).
    assert!(
        rows(&run)
            .iter()
            .filter(|r| r["step"].as_u64() > Some(at_restart + 2))
            .any(|r| actors_in(r) == Some(1.0)),
        "{log}"
    );
    let status = wait(&mut actor, 60);
    let alog = stderr_of(&mut actor);
    assert!(status.is_some_and(|s| s.success()), "{alog}");
    assert!(alog.contains("reconnected"), "{alog}");
}
