//! `asymre bench --transport`: what the Redis transport carries on this machine, next to
//! `redis-benchmark`'s XADD rate for messages of the same size, measured in the same run against
//! the same server; and how long publishing and reading weights takes.
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::ids::SourceId;
use crate::policy::{NamedTensor, WeightSnapshot};
use crate::trajectory::{ActorBatch, EpisodeStats, Trajectory};
use crate::transport::codec::encode_batch;
use crate::transport::redis::{Link, LocalServer, RedisBoard, RedisSink, RedisSource, RunKeys};

pub struct TransportBench<'a> {
    /// Seconds per throughput measurement.
    pub secs: f64,
    pub json: Option<&'a Path>,
}

/// A tool-use message as actors send it: 64 episodes of 40 tokens, 24 written by the policy.
fn message() -> ActorBatch {
    ActorBatch {
        actor: 0,
        trajectories: (0..64)
            .map(|i| {
                let mut t = Trajectory::synthetic(
                    SourceId::new(0, 0, 0).prompt(i / 8, (i % 8) as u32),
                    (0..40).map(|k| (k * 7 + i as u32) % 60).collect(),
                    16,
                    -0.3,
                    1.0,
                );
                t.stats = Some(Box::new(EpisodeStats::default()));
                t
            })
            .collect(),
    }
}

/// Messages per second through our sink and source (one actor, one learner) for `secs`.
fn ours(url: &str, bytes: &[u8], secs: f64) -> Result<f64> {
    let keys = RunKeys::new("bench");
    let patience = Duration::from_secs(10);
    let source = RedisSource::new(Link::open(url, patience)?, keys.clone())?;
    let sink = RedisSink::new(Link::open(url, patience)?, keys, 64, "bench/0");
    let (done, got) = (AtomicBool::new(false), AtomicU64::new(0));
    let start = Instant::now();
    std::thread::scope(|scope| -> Result<()> {
        let reader = scope.spawn(|| -> Result<()> {
            while !done.load(Ordering::Relaxed) {
                if source.recv(Duration::from_millis(20))?.is_some() {
                    got.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(())
        });
        while start.elapsed().as_secs_f64() < secs {
            sink.send_bytes(bytes)?;
        }
        done.store(true, Ordering::Relaxed);
        reader
            .join()
            .map_err(|_| Error::Corrupt("the reader panicked".into()))?
    })?;
    Ok(got.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

/// `redis-benchmark`'s XADD requests per second with a payload of `size` bytes from `clients`
/// connections.
fn redis_benchmark(port: u16, size: usize, clients: usize, requests: usize) -> Result<f64> {
    let payload = "x".repeat(size);
    let out = std::process::Command::new("redis-benchmark")
        .args(["-p", &port.to_string(), "-q", "-c", &clients.to_string()])
        .args(["-n", &requests.to_string()])
        .args([
            "XADD",
            "asymre:bench:rb",
            "MAXLEN",
            "~",
            "1000",
            "*",
            "b",
            &payload,
        ])
        .output()
        .map_err(|e| Error::input(format!("cannot run redis-benchmark ({e})")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "XADD asymre:bench:rb …: 12345.67 requests per second, p50=…"
    text.split("requests per second")
        .next()
        .and_then(|head| head.rsplit(": ").next())
        .and_then(|n| n.trim().parse::<f64>().ok())
        .ok_or_else(|| Error::Corrupt(format!("redis-benchmark said: {text:.200}")))
}

/// Seconds to publish and to read back a snapshot of `params` f32 values.
fn weights(url: &str, params: usize) -> Result<(f64, f64)> {
    let keys = RunKeys::new(&format!("bench-w{params}"));
    let patience = Duration::from_secs(10);
    let board = RedisBoard::new(Link::open(url, patience)?, keys.clone(), 4 << 20, 2);
    let reader = RedisBoard::new(Link::open(url, patience)?, keys, 4 << 20, 2);
    let snap = WeightSnapshot {
        version: 1,
        tensors: vec![NamedTensor {
            name: "w".into(),
            shape: vec![params],
            data: (0..params).map(|i| i as f32 * 1e-6).collect(),
        }]
        .into(),
    };
    let t = Instant::now();
    board.try_publish(&snap)?;
    let publish = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let back = reader
        .try_latest()?
        .ok_or_else(|| Error::Corrupt("no weights read back".into()))?;
    let read = t.elapsed().as_secs_f64();
    if back.tensors[0].data.len() != params {
        return Err(Error::Corrupt("weights read back wrong".into()));
    }
    Ok((publish, read))
}

/// The sleep-bound run: the bandit, whose sampling costs microseconds, with every actor
/// sleeping 20 ms after each message of 256 arms, so each actor process offers at most 12,800
/// samples a second whatever this machine's cores, and the learner takes a step per message.
const SLEEPY: &str = r#"
[env]
kind = "bandit"
mode = "sampled"
arms = 100
rounds = 1
steps_per_round = 600
[actor]
threads = 0
batch_size = 256
group_size = 8
[replay]
capacity = 4096
max_policy_lag = 0
[learner]
optimizer = "sgd"
lr = 1.0
batch_size = 256
sync_interval = 10
[logging]
every = 20
progress = false
[checkpoint]
every = 100000
[faults]
actor_delay_ms = 20
"#;

/// Samples per second of the sleep-bound run with `n` actor processes, between its rows at
/// step 100 and its last.
fn scaling(url: &str, n: usize) -> Result<f64> {
    let exe = std::env::current_exe().map_err(|e| Error::io("the benchmark's binary", e))?;
    let dir = std::env::temp_dir().join(format!("asymre-bench-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let cfg = dir.join("sleepy.toml");
    std::fs::write(&cfg, SLEEPY).map_err(|e| Error::io(&cfg, e))?;
    let name = format!("sleepy{n}");
    let run = dir.join(&name);
    let quiet = || std::process::Stdio::null();
    let mut learner = std::process::Command::new(&exe)
        .arg("train")
        .arg("--config")
        .arg(&cfg)
        .arg("--out")
        .arg(&run)
        .args(["--transport", url])
        .stdout(quiet())
        .stderr(quiet())
        .spawn()
        .map_err(|e| Error::io("the learner", e))?;
    let mut actors = (0..n)
        .map(|_| {
            std::process::Command::new(&exe)
                .args(["actor", "--transport", url, "--run", &name])
                .stdout(quiet())
                .stderr(quiet())
                .spawn()
                .map_err(|e| Error::io("an actor", e))
        })
        .collect::<Result<Vec<_>>>()?;
    let status = learner.wait().map_err(|e| Error::io("the learner", e))?;
    for a in &mut actors {
        let deadline = Instant::now() + Duration::from_secs(30);
        while a.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = a.kill();
        let _ = a.wait();
    }
    if !status.success() {
        return Err(Error::Corrupt(format!(
            "the sleep-bound run failed ({status})"
        )));
    }
    let text = std::fs::read_to_string(run.join("metrics.jsonl"))
        .map_err(|e| Error::io(run.join("metrics.jsonl"), e))?;
    let rows: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|r| Some((r["step"].as_f64()?, r["wall_time"].as_f64()?)))
        .filter(|&(step, _)| step >= 100.0)
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
        return Err(Error::Corrupt("the sleep-bound run logged no rows".into()));
    };
    Ok((last.0 - first.0) * 256.0 / (last.1 - first.1).max(1e-9))
}

pub fn run(b: &TransportBench) -> Result<()> {
    let server = LocalServer::start()?;
    let url = server.url();
    let bytes = encode_batch(&message());
    let size = bytes.len();
    eprintln!("bench --transport: messages of {size} bytes (64 episodes of 40 tokens)");
    let rate = ours(&url, &bytes, b.secs)?;
    let requests = ((rate * b.secs * 2.0) as usize).clamp(2_000, 200_000);
    let rb1 = redis_benchmark(server.port, size, 1, requests)?;
    let rb16 = redis_benchmark(server.port, size, 16, requests)?;
    let mb = |r: f64| r * size as f64 / 1e6;
    println!("| | messages/s | trajectories/s | MB/s | vs redis-benchmark, 1 client |");
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| asymre sink → source (1 actor, 1 learner) | {rate:.0} | {:.0} | {:.1} | {:.2}× |",
        rate * 64.0,
        mb(rate),
        rate / rb1
    );
    println!(
        "| redis-benchmark XADD, 1 client | {rb1:.0} | | {:.1} | 1.00× |",
        mb(rb1)
    );
    println!(
        "| redis-benchmark XADD, 16 clients | {rb16:.0} | | {:.1} | {:.2}× |",
        mb(rb16),
        rb16 / rb1
    );
    let mut rows = Vec::new();
    for (what, params) in [
        ("small transformer (d128, 2 layers)", 430_000usize),
        ("SmolLM2-135M, f32", 134_515_008),
    ] {
        let (publish, read) = weights(&url, params)?;
        println!(
            "| weights of the {what}: {:.0} MB | publish {publish:.3} s | read {read:.3} s |",
            params as f64 * 4e-6
        );
        rows.push(serde_json::json!({"what": what, "params": params, "publish_s": publish, "read_s": read}));
    }
    println!("| actor processes (sleep-bound) | samples/s | × one process | × the half |");
    println!("|---|---:|---:|---:|");
    let mut curve: Vec<(usize, f64)> = Vec::new();
    for n in [1usize, 2, 4] {
        let rate = scaling(&url, n)?;
        let one = curve.first().map_or(rate, |c| c.1);
        let half = curve.last().map_or(rate, |c| c.1);
        println!(
            "| {n} | {rate:.0} | {:.2}× | {:.2}× |",
            rate / one,
            rate / half
        );
        curve.push((n, rate));
    }
    if let Some(path) = b.json {
        let j = serde_json::json!({
            "scaling": curve.iter().map(|(n, r)| serde_json::json!({"actors": n, "samples_per_s": r})).collect::<Vec<_>>(),
            "message_bytes": size,
            "asymre_messages_per_s": rate,
            "redis_benchmark_1_client": rb1,
            "redis_benchmark_16_clients": rb16,
            "weights": rows,
        });
        std::fs::write(path, j.to_string()).map_err(|e| Error::io(path, e))?;
    }
    Ok(())
}
