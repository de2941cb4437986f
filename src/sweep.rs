//! `asymre sweep`: the Cartesian product of grid values × seeds, one run directory per point.
//!
//! Each point runs as a child process of this binary (`train`, or `resume` for a point a killed
//! sweep left half done), with a bounded thread budget so `jobs` runs share the cores. A point
//! whose run directory holds `summary.json` is finished and skipped, so a sweep started again does
//! only what is missing. At the end the sweep writes `summary.csv` (one row per run),
//! `table.txt` (mean ± std over seeds) and its plots.
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{self, Config, EnvKind};
use crate::error::{Error, IoContext, Result};
use crate::metrics::{read_jsonl, tags};

/// One `--grid key=v1,v2,…` axis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Axis {
    pub key: String,
    pub values: Vec<String>,
}

impl std::str::FromStr for Axis {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| Error::input(format!("--grid {s}: {why} (expected KEY=V1,V2,…)"));
        let (key, list) = s.split_once('=').ok_or_else(|| bad("no '='"))?;
        let key = key.trim();
        if key.is_empty() || key == "seed" {
            return Err(bad("needs a config key other than seed (use --seeds)"));
        }
        let values: Vec<String> = list.split(',').map(|v| v.trim().to_string()).collect();
        if values.iter().any(|v| v.is_empty()) {
            return Err(bad("empty value"));
        }
        if values.iter().any(|v| v.contains('/') || v.contains("__")) {
            return Err(bad("values may not contain '/' or '__'"));
        }
        Ok(Axis {
            key: key.to_string(),
            values,
        })
    }
}

/// What `asymre sweep` was asked to do; stored as `sweep.json` so a restart can check it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub grid: Vec<Axis>,
    pub seeds: Vec<u64>,
    /// `--set` overrides applied to every point.
    pub overrides: Vec<String>,
    pub serial: bool,
}

/// One run of the sweep: grid values and a seed.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub values: Vec<(String, String)>,
    pub seed: u64,
}

impl Point {
    /// The run directory's name: `key=value__…__seed=N`.
    pub fn name(&self) -> String {
        let mut parts: Vec<String> = self
            .values
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        parts.push(format!("seed={}", self.seed));
        parts.join("__")
    }

    fn overrides(&self) -> Vec<String> {
        let mut o: Vec<String> = self
            .values
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        o.push(format!("seed={}", self.seed));
        o
    }
}

impl Manifest {
    /// Every grid combination × every seed, in grid order (the last axis varies fastest).
    pub fn points(&self) -> Vec<Point> {
        let mut combos: Vec<Vec<(String, String)>> = vec![Vec::new()];
        for axis in &self.grid {
            combos = combos
                .into_iter()
                .flat_map(|c| {
                    axis.values.iter().map(move |v| {
                        let mut c = c.clone();
                        c.push((axis.key.clone(), v.clone()));
                        c
                    })
                })
                .collect();
        }
        combos
            .into_iter()
            .flat_map(|values| {
                self.seeds.iter().map(move |&seed| Point {
                    values: values.clone(),
                    seed,
                })
            })
            .collect()
    }
}

/// `asymre sweep`'s arguments.
pub struct SweepArgs {
    pub config: PathBuf,
    pub grid: Vec<Axis>,
    pub seeds: usize,
    pub jobs: Option<usize>,
    pub out: PathBuf,
    pub overrides: Vec<String>,
    pub serial: bool,
}

/// How a sweep ended.
#[derive(Debug)]
pub enum SweepOutcome {
    /// Every point finished; the table is printed.
    Finished { runs: usize, table: String },
    /// SIGINT/SIGTERM: running points checkpointed; `code` is 130 or 143.
    Interrupted { code: u8, done: usize, total: usize },
    /// Some points failed (their logs are named); the others finished.
    Failed { failures: Vec<String> },
}

fn base_config_path(out: &Path) -> PathBuf {
    out.join("base.toml")
}

/// The run directories live under `<sweep>/runs/`.
pub fn run_dir(out: &Path, point: &Point) -> PathBuf {
    out.join("runs").join(point.name())
}

/// Reads `sweep.json` and `base.toml` of a sweep directory.
pub fn open(out: &Path) -> Result<(Manifest, String)> {
    let path = out.join("sweep.json");
    let text = std::fs::read_to_string(&path).map_err(|_| {
        Error::input(format!(
            "{}: not a sweep directory (no sweep.json)",
            out.display()
        ))
    })?;
    let manifest: Manifest = serde_json::from_str(&text)
        .map_err(|e| Error::Corrupt(format!("{}: {e}", path.display())))?;
    let base = std::fs::read_to_string(base_config_path(out)).at(base_config_path(out))?;
    Ok((manifest, base))
}

/// Threads one run uses: actors and learner, or one in serial mode.
fn threads_per_run(cfg: &Config, serial: bool) -> usize {
    if serial || cfg.env.kind == EnvKind::Bandit && cfg.env.mode == config::BanditMode::Exact {
        1
    } else {
        cfg.actor.threads + 1
    }
}

/// Runs (or finishes) a sweep. `interrupt` holds 130/143 once SIGINT/SIGTERM arrived.
pub fn run(args: &SweepArgs, interrupt: &AtomicUsize) -> Result<SweepOutcome> {
    if args.seeds == 0 {
        return Err(Error::input("--seeds: must be at least 1"));
    }
    let base_text = std::fs::read_to_string(&args.config)
        .map_err(|e| Error::input(format!("cannot read config {}: {e}", args.config.display())))?;
    let base = config::from_toml_str(&base_text, &args.overrides)
        .map_err(|e| Error::input(format!("{}: {e}", args.config.display())))?;
    let manifest = Manifest {
        grid: args.grid.clone(),
        seeds: (0..args.seeds as u64).map(|i| base.seed + i).collect(),
        overrides: args.overrides.clone(),
        serial: args.serial,
    };
    let points = manifest.points();
    // Every point's config must be valid before anything runs.
    let mut per_run = 1;
    for p in &points {
        let mut o = manifest.overrides.clone();
        o.extend(p.overrides());
        let cfg = config::from_toml_str(&base_text, &o)
            .map_err(|e| Error::input(format!("sweep point {}: {e}", p.name())))?;
        per_run = per_run.max(threads_per_run(&cfg, args.serial));
    }

    let out = &args.out;
    if out.join("sweep.json").exists() {
        let (old, old_base) = open(out)?;
        if old != manifest || old_base != base_text {
            return Err(Error::input(format!(
                "--out {}: holds a different sweep (other grid, seeds, overrides or config); choose another directory",
                out.display()
            )));
        }
    } else {
        if out.exists() && std::fs::read_dir(out).at(out)?.next().is_some() {
            return Err(Error::input(format!(
                "--out {}: the directory exists, is not empty and holds no sweep",
                out.display()
            )));
        }
        std::fs::create_dir_all(out.join("logs")).at(out)?;
        crate::checkpoint::write_atomic(&base_config_path(out), base_text.as_bytes())?;
        let json = serde_json::to_string_pretty(&manifest).expect("manifest serialises");
        crate::checkpoint::write_atomic(&out.join("sweep.json"), json.as_bytes())?;
    }
    std::fs::create_dir_all(out.join("logs")).at(out)?;

    let todo: VecDeque<Point> = points
        .iter()
        .filter(|p| !run_dir(out, p).join("summary.json").exists())
        .cloned()
        .collect();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let jobs = args.jobs.unwrap_or((cores / per_run).max(1)).max(1);
    let intra = (cores / (jobs * per_run)).max(1);
    eprintln!(
        "sweep {}: {} runs ({} to do), {jobs} at a time, {per_run} thread(s) each + {intra} intra-op thread(s)",
        out.display(),
        points.len(),
        todo.len()
    );
    if jobs * per_run > cores {
        eprintln!(
            "warning: {jobs} jobs × {per_run} threads oversubscribe {cores} cores; runs will be slower"
        );
    }

    let bar = indicatif::ProgressBar::new(todo.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} runs (eta {eta}) {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let queue = Mutex::new(todo);
    let children: Mutex<Vec<u32>> = Mutex::new(Vec::new());
    let failures: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let exe = std::env::current_exe().map_err(|e| Error::io("current executable", e))?;
    let worker = || -> Result<()> {
        loop {
            if interrupt.load(Ordering::SeqCst) != 0 {
                return Ok(());
            }
            let Some(point) = queue.lock().expect("queue").pop_front() else {
                return Ok(());
            };
            let dir = run_dir(out, &point);
            let log_path = out.join("logs").join(format!("{}.log", point.name()));
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .at(&log_path)?;
            let mut cmd = std::process::Command::new(&exe);
            if dir.join("config.toml").exists() {
                cmd.arg("resume").arg(&dir);
            } else {
                if dir.exists() {
                    // Killed between creating the directory and writing its config.
                    std::fs::remove_dir_all(&dir).at(&dir)?;
                }
                cmd.arg("train")
                    .arg("--config")
                    .arg(base_config_path(out))
                    .arg("--out")
                    .arg(&dir);
                for o in manifest.overrides.iter().cloned().chain(point.overrides()) {
                    cmd.arg("--set").arg(o);
                }
                cmd.arg("--set")
                    .arg(format!("learner.intra_op_threads={intra}"))
                    .arg("--set")
                    .arg("logging.progress=false");
                if manifest.serial {
                    cmd.arg("--serial");
                }
            }
            // SAFETY: prctl(2) is async-signal-safe. A point's run stops (with a checkpoint) when
            // the sweep dies, even by SIGKILL, so a restarted sweep never races an orphan.
            unsafe {
                use std::os::unix::process::CommandExt;
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                    Ok(())
                });
            }
            for var in ["OMP_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS"] {
                cmd.env(var, intra.to_string());
            }
            let err_log = log.try_clone().at(&log_path)?;
            let mut child = cmd
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(err_log)
                .spawn()
                .map_err(|e| Error::io(&exe, e))?;
            children.lock().expect("children").push(child.id());
            bar.set_message(point.name());
            let status = child.wait().map_err(|e| Error::io(&exe, e))?;
            children
                .lock()
                .expect("children")
                .retain(|&id| id != child.id());
            match status.code() {
                Some(0) => bar.inc(1),
                Some(130) | Some(143) => {}
                other => failures.lock().expect("failures").push(format!(
                    "{}: exit {} (see {})",
                    point.name(),
                    other.map_or("by signal".to_string(), |c| c.to_string()),
                    log_path.display()
                )),
            }
        }
    };
    let results: Vec<Result<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..jobs).map(|_| s.spawn(worker)).collect();
        let mut forwarded = false;
        while !handles.iter().all(|h| h.is_finished()) {
            if !forwarded && interrupt.load(Ordering::SeqCst) != 0 {
                // Ask the running points to checkpoint and stop (Ctrl-C reaches them directly
                // from the terminal; a SIGTERM to the sweep alone does not).
                for &pid in children.lock().expect("children").iter() {
                    // SAFETY: kill(2) with a child's pid and SIGTERM has no memory effects.
                    unsafe {
                        libc::kill(pid as libc::pid_t, libc::SIGTERM);
                    }
                }
                forwarded = true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        handles
            .into_iter()
            .map(|h| h.join().expect("sweep worker panicked"))
            .collect()
    });
    bar.finish_and_clear();
    for r in results {
        r?;
    }
    let code = interrupt.load(Ordering::SeqCst);
    if code != 0 {
        let done = points
            .iter()
            .filter(|p| run_dir(out, p).join("summary.json").exists())
            .count();
        return Ok(SweepOutcome::Interrupted {
            code: code as u8,
            done,
            total: points.len(),
        });
    }
    let failures = failures.into_inner().expect("failures");
    let (rows, table) = write_reports(out)?;
    if let Err(e) = crate::plot::plot_sweeps(&[out.to_path_buf()], out) {
        eprintln!("warning: sweep plots not written: {e}");
    }
    if !failures.is_empty() {
        return Ok(SweepOutcome::Failed { failures });
    }
    Ok(SweepOutcome::Finished { runs: rows, table })
}

/// What a finished run's metrics say, for the sweep tables.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRow {
    pub point: Point,
    pub final_reward: f64,
    pub best_reward: f64,
    /// Tool use: held-out greedy completion at the end and at its best evaluation.
    pub final_completion: Option<f64>,
    pub best_completion: Option<f64>,
    pub final_entropy: f64,
    /// Bandit: arms with π > 1e-3 at the end, and the theory's limit from the last round's μ.
    pub support: Option<f64>,
    pub predicted_support: Option<f64>,
    pub predicted_reward: Option<f64>,
    pub collapsed: bool,
    pub wall_time: f64,
}

fn moving_average(values: &[f64], window: usize) -> Vec<f64> {
    let w = window.max(1);
    (0..values.len())
        .map(|i| {
            let lo = (i + 1).saturating_sub(w);
            values[lo..=i].iter().sum::<f64>() / (i + 1 - lo) as f64
        })
        .collect()
}

/// Reads one finished run directory into a [`RunRow`].
pub fn read_run(dir: &Path, point: Point) -> Result<RunRow> {
    let (cfg, _) = crate::train::open_run_dir(dir)?;
    let summary_path = dir.join("summary.json");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary_path).at(&summary_path)?)
            .map_err(|e| Error::Corrupt(format!("{}: {e}", summary_path.display())))?;
    let rows = read_jsonl(&dir.join("metrics.jsonl"))?;
    let series = |key: &str| -> Vec<f64> {
        rows.iter()
            .filter_map(|r| r.get(key)?.as_f64())
            .filter(|v| v.is_finite())
            .collect()
    };
    let num = |key: &str| summary.get(key).and_then(serde_json::Value::as_f64);
    let bandit = cfg.env.kind == EnvKind::Bandit;
    let reward_key = if bandit {
        tags::EXPECTED_REWARD
    } else {
        tags::BATCH_REWARD
    };
    let window = cfg.collapse.window;
    let smoothed = moving_average(&series(reward_key), window);
    let final_reward = *smoothed.last().ok_or_else(|| {
        Error::Corrupt(format!(
            "{}: no {reward_key} in metrics.jsonl",
            dir.display()
        ))
    })?;
    let best_reward = smoothed.iter().cloned().fold(f64::MIN, f64::max);
    let entropy = series(tags::ENTROPY);
    let final_entropy = if bandit {
        num("final_entropy").unwrap_or(f64::NAN)
    } else {
        let tail = &entropy[entropy.len().saturating_sub(window)..];
        tail.iter().sum::<f64>() / tail.len().max(1) as f64
    };
    let heldout = series(tags::HELDOUT_COMPLETION);
    let final_completion = summary
        .pointer("/final_heldout/completion")
        .and_then(serde_json::Value::as_f64);
    let best_completion =
        (!heldout.is_empty()).then(|| heldout.iter().cloned().fold(0.0, f64::max));
    let reference = if bandit {
        num("best_arm_reward")
            .unwrap_or(best_reward)
            .max(best_reward)
    } else {
        best_reward
    };
    let collapsed = final_entropy <= cfg.collapse.entropy
        && final_reward <= reference - cfg.collapse.reward_drop;
    Ok(RunRow {
        point,
        final_reward,
        best_reward,
        final_completion,
        best_completion,
        final_entropy,
        support: num("final_support_size"),
        predicted_support: num("predicted_limit_support"),
        predicted_reward: num("predicted_limit_reward"),
        collapsed,
        wall_time: num("wall_time").unwrap_or(f64::NAN),
    })
}

/// Every finished run of a sweep, in grid order.
pub fn read_rows(out: &Path) -> Result<(Manifest, Vec<RunRow>)> {
    let (manifest, _) = open(out)?;
    let mut rows = Vec::new();
    for p in manifest.points() {
        let dir = run_dir(out, &p);
        if dir.join("summary.json").exists() {
            rows.push(read_run(&dir, p)?);
        }
    }
    Ok((manifest, rows))
}

fn opt(v: Option<f64>) -> String {
    v.map_or(String::new(), |x| format!("{x}"))
}

/// Mean and (population) standard deviation.
pub fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len().max(1) as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// One grid point's `(key, value)` pairs and its runs (one per seed).
pub type Group<'a> = (Vec<(String, String)>, Vec<&'a RunRow>);

/// Runs grouped by their grid values (seeds pooled), in grid order.
pub fn groups(rows: &[RunRow]) -> Vec<Group<'_>> {
    let mut out: Vec<Group<'_>> = Vec::new();
    for r in rows {
        match out.iter_mut().find(|(v, _)| *v == r.point.values) {
            Some((_, g)) => g.push(r),
            None => out.push((r.point.values.clone(), vec![r])),
        }
    }
    out
}

/// Writes `summary.csv` and `table.txt`; returns the number of runs and the table.
pub fn write_reports(out: &Path) -> Result<(usize, String)> {
    let (manifest, rows) = read_rows(out)?;
    let keys: Vec<&str> = manifest.grid.iter().map(|a| a.key.as_str()).collect();
    let mut csv = String::new();
    for k in &keys {
        let _ = write!(csv, "{k},");
    }
    csv.push_str(
        "seed,final_reward,best_reward,final_completion,best_completion,final_entropy,support,predicted_support,predicted_reward,collapsed,wall_time\n",
    );
    for r in &rows {
        for (_, v) in &r.point.values {
            let _ = write!(csv, "{v},");
        }
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{},{},{},{},{},{}",
            r.point.seed,
            r.final_reward,
            r.best_reward,
            opt(r.final_completion),
            opt(r.best_completion),
            r.final_entropy,
            opt(r.support),
            opt(r.predicted_support),
            opt(r.predicted_reward),
            r.collapsed,
            r.wall_time
        );
    }
    crate::checkpoint::write_atomic(&out.join("summary.csv"), csv.as_bytes())?;

    let tool = rows.iter().any(|r| r.final_completion.is_some());
    let bandit = rows.iter().any(|r| r.support.is_some());
    let mut header: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    header.extend(["seeds".into(), "final reward".into(), "best reward".into()]);
    if tool {
        header.push("held-out completion".into());
    }
    if bandit {
        header.push("support".into());
    }
    header.extend(["entropy".into(), "collapsed".into(), "wall s".into()]);
    let pm = |xs: Vec<f64>, d: usize| {
        let (m, s) = mean_std(&xs);
        // + 0.0 turns −0 into 0.
        format!("{:.d$} ± {:.d$}", m + 0.0, s + 0.0)
    };
    let mut lines = vec![header];
    for (values, g) in groups(&rows) {
        let mut line: Vec<String> = values.iter().map(|(_, v)| v.clone()).collect();
        line.push(g.len().to_string());
        line.push(pm(g.iter().map(|r| r.final_reward).collect(), 3));
        line.push(pm(g.iter().map(|r| r.best_reward).collect(), 3));
        if tool {
            line.push(pm(g.iter().filter_map(|r| r.final_completion).collect(), 3));
        }
        if bandit {
            line.push(pm(g.iter().filter_map(|r| r.support).collect(), 1));
        }
        line.push(pm(g.iter().map(|r| r.final_entropy).collect(), 3));
        line.push(format!(
            "{}/{}",
            g.iter().filter(|r| r.collapsed).count(),
            g.len()
        ));
        line.push(format!(
            "{:.0}",
            mean_std(&g.iter().map(|r| r.wall_time).collect::<Vec<_>>()).0
        ));
        lines.push(line);
    }
    let (widths, padded) = crate::text::pad_columns(&lines);
    let mut table = String::new();
    for (i, cells) in padded.iter().enumerate() {
        let _ = writeln!(table, "{}", cells.join("  ").trim_end());
        if i == 0 {
            let _ = writeln!(
                table,
                "{}",
                widths
                    .iter()
                    .map(|w| "-".repeat(*w))
                    .collect::<Vec<_>>()
                    .join("  ")
            );
        }
    }
    crate::checkpoint::write_atomic(&out.join("table.txt"), table.as_bytes())?;
    Ok((rows.len(), table))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_axes_parse_and_reject_bad_input() {
        let a: Axis = "loss.baseline.delta_v=-0.1, 0 ,0.1".parse().unwrap();
        assert_eq!(a.key, "loss.baseline.delta_v");
        assert_eq!(a.values, ["-0.1", "0", "0.1"]);
        for bad in ["novalue", "=1,2", "k=1,,2", "seed=1,2", "k=a/b"] {
            assert!(bad.parse::<Axis>().is_err(), "{bad}");
        }
    }

    #[test]
    fn points_are_the_product_times_seeds() {
        let m = Manifest {
            grid: vec![
                "a=1,2".parse().unwrap(),
                "loss.kind=asymre,grpo,reinforce".parse().unwrap(),
            ],
            seeds: vec![7, 8],
            overrides: Vec::new(),
            serial: true,
        };
        let points = m.points();
        assert_eq!(points.len(), 12);
        assert_eq!(points[0].name(), "a=1__loss.kind=asymre__seed=7");
        assert_eq!(points[1].name(), "a=1__loss.kind=asymre__seed=8");
        assert_eq!(points[11].name(), "a=2__loss.kind=reinforce__seed=8");
        let names: std::collections::HashSet<String> = points.iter().map(Point::name).collect();
        assert_eq!(names.len(), 12);
    }

    #[test]
    fn moving_average_and_mean_std() {
        assert_eq!(
            moving_average(&[1.0, 3.0, 5.0, 7.0], 2),
            [1.0, 2.0, 4.0, 6.0]
        );
        let (m, s) = mean_std(&[1.0, 3.0]);
        assert_eq!((m, s), (2.0, 1.0));
    }
}
