//! `asymre sweep`: the Cartesian product of grid values × seeds, one run directory per point.
//!
//! Each point runs as a child process of this binary (`train`, or `resume` for a point a killed
//! sweep left half done), with a bounded thread budget so `jobs` runs share the cores. A point
//! whose run directory holds `summary.json` is finished and skipped, so a sweep started again does
//! only what is missing. At the end the sweep writes `summary.csv` (one row per run),
//! `table.txt` (mean ± std over seeds) and its plots.
use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::app::experiments::report::{
    base_config_path, open, run_dir, write_reports, Axis, Manifest, Point,
};
use crate::config::{self, Config};
use crate::error::{Error, IoContext, Result};

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

/// Threads one run uses.
fn threads_per_run(cfg: &Config, serial: bool) -> usize {
    crate::run::threads_used(cfg, serial)
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
        crate::store::checkpoint::write_atomic(&base_config_path(out), base_text.as_bytes())?;
        let json = serde_json::to_string_pretty(&manifest).expect("manifest serialises");
        crate::store::checkpoint::write_atomic(&out.join("sweep.json"), json.as_bytes())?;
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
    if let Err(e) = crate::app::experiments::plot::plot_sweeps(&[out.to_path_buf()], out) {
        eprintln!("warning: sweep plots not written: {e}");
    }
    if !failures.is_empty() {
        return Ok(SweepOutcome::Failed { failures });
    }
    Ok(SweepOutcome::Finished { runs: rows, table })
}
