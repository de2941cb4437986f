//! `asymre sweep`: the Cartesian product of grid values × seeds, one run directory per point.
//!
//! Each point runs as a child process of this binary (`train`, or `resume` for a point a killed
//! sweep left half done), with a bounded thread budget so `jobs` runs share the cores. A point
//! whose run directory holds `summary.json` is finished and skipped, so a sweep started again does
//! only what is missing. At the end the sweep writes `summary.csv` (one row per run),
//! `table.txt` (mean ± std over seeds) and its plots.
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
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
    let plan = Plan::new(args)?;
    plan.open_dir(&args.out)?;
    let todo: VecDeque<Point> = plan
        .points
        .iter()
        .filter(|p| !run_dir(&args.out, p).join("summary.json").exists())
        .cloned()
        .collect();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_run = plan.per_run;
    let jobs = args.jobs.unwrap_or((cores / per_run).max(1)).max(1);
    let intra = (cores / (jobs * per_run)).max(1);
    eprintln!(
        "sweep {}: {} runs ({} to do), {jobs} at a time, {per_run} thread(s) each + {intra} intra-op thread(s)",
        args.out.display(),
        plan.points.len(),
        todo.len()
    );
    if jobs * per_run > cores {
        eprintln!(
            "warning: {jobs} jobs × {per_run} threads oversubscribe {cores} cores; runs will be slower"
        );
    }
    let pool = Pool {
        plan: &plan,
        out: &args.out,
        intra,
        exe: std::env::current_exe().map_err(|e| Error::io("current executable", e))?,
        queue: Mutex::new(todo),
        children: Mutex::new(Vec::new()),
        failures: Mutex::new(Vec::new()),
        bar: super::progress_bar(0, "runs"),
        interrupt,
    };
    pool.bar
        .set_length(pool.queue.lock().expect("queue").len() as u64);
    pool.drive(jobs)?;
    let code = interrupt.load(Ordering::SeqCst);
    if code != 0 {
        let done = plan
            .points
            .iter()
            .filter(|p| run_dir(&args.out, p).join("summary.json").exists())
            .count();
        return Ok(SweepOutcome::Interrupted {
            code: code as u8,
            done,
            total: plan.points.len(),
        });
    }
    let failures = pool.failures.into_inner().expect("failures");
    let (rows, table) = write_reports(&args.out)?;
    if let Err(e) =
        crate::app::experiments::plot::plot_sweeps(std::slice::from_ref(&args.out), &args.out, None)
    {
        eprintln!("warning: sweep plots not written: {e}");
    }
    if !failures.is_empty() {
        return Ok(SweepOutcome::Failed { failures });
    }
    Ok(SweepOutcome::Finished { runs: rows, table })
}

/// What a sweep runs: its manifest, the base config's text, its points and the threads one
/// point's run takes.
struct Plan {
    manifest: Manifest,
    base_text: String,
    points: Vec<Point>,
    per_run: usize,
}

impl Plan {
    /// The sweep of `args`; every point's config must be valid before anything runs.
    fn new(args: &SweepArgs) -> Result<Self> {
        if args.seeds == 0 {
            return Err(Error::input("--seeds: must be at least 1"));
        }
        let base_text = std::fs::read_to_string(&args.config).map_err(|e| {
            Error::input(format!("cannot read config {}: {e}", args.config.display()))
        })?;
        let base = config::from_toml_str(&base_text, &args.overrides)
            .map_err(|e| Error::input(format!("{}: {e}", args.config.display())))?;
        let manifest = Manifest {
            grid: args.grid.clone(),
            seeds: (0..args.seeds as u64).map(|i| base.seed + i).collect(),
            overrides: args.overrides.clone(),
            serial: args.serial,
        };
        let points = manifest.points();
        let mut per_run = 1;
        for p in &points {
            let mut o = manifest.overrides.clone();
            o.extend(p.overrides());
            let cfg = config::from_toml_str(&base_text, &o)
                .map_err(|e| Error::input(format!("sweep point {}: {e}", p.name())))?;
            per_run = per_run.max(threads_per_run(&cfg, args.serial));
        }
        Ok(Plan {
            manifest,
            base_text,
            points,
            per_run,
        })
    }

    /// Opens the sweep directory `out` again (it must hold this very sweep), or makes it.
    fn open_dir(&self, out: &Path) -> Result<()> {
        if out.join("sweep.json").exists() {
            let (old, old_base) = open(out)?;
            if old != self.manifest || old_base != self.base_text {
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
            let write = crate::store::checkpoint::write_atomic;
            write(&base_config_path(out), self.base_text.as_bytes())?;
            let json = serde_json::to_string_pretty(&self.manifest).expect("manifest serialises");
            write(&out.join("sweep.json"), json.as_bytes())?;
        }
        std::fs::create_dir_all(out.join("logs")).at(out)
    }
}

/// `jobs` workers taking points off one queue, each running a point's `asymre` child process.
struct Pool<'a> {
    plan: &'a Plan,
    out: &'a Path,
    /// Intra-op threads per run.
    intra: usize,
    exe: PathBuf,
    queue: Mutex<VecDeque<Point>>,
    /// The running children's pids (a SIGTERM to the sweep is forwarded to them).
    children: Mutex<Vec<u32>>,
    failures: Mutex<Vec<String>>,
    bar: indicatif::ProgressBar,
    interrupt: &'a AtomicUsize,
}

impl Pool<'_> {
    /// Runs the queue with `jobs` workers; on an interrupt, asks the running points to
    /// checkpoint and stop (Ctrl-C reaches them directly from the terminal; a SIGTERM to the
    /// sweep alone does not).
    fn drive(&self, jobs: usize) -> Result<()> {
        let results: Vec<Result<()>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..jobs).map(|_| s.spawn(|| self.worker())).collect();
            let mut forwarded = false;
            while !handles.iter().all(|h| h.is_finished()) {
                if !forwarded && self.interrupt.load(Ordering::SeqCst) != 0 {
                    for &pid in self.children.lock().expect("children").iter() {
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
        self.bar.finish_and_clear();
        results.into_iter().collect()
    }

    /// Takes points until the queue is empty or the sweep is interrupted.
    fn worker(&self) -> Result<()> {
        while self.interrupt.load(Ordering::SeqCst) == 0 {
            let Some(point) = self.queue.lock().expect("queue").pop_front() else {
                return Ok(());
            };
            self.run_point(&point)?;
        }
        Ok(())
    }

    /// Runs one point to its end (or its checkpoint at an interrupt), logging to its log file;
    /// a failure is recorded with the log's name.
    fn run_point(&self, point: &Point) -> Result<()> {
        let log_path = self.out.join("logs").join(format!("{}.log", point.name()));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .at(&log_path)?;
        let mut cmd = self.command(point)?;
        let err_log = log.try_clone().at(&log_path)?;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err_log)
            .spawn()
            .map_err(|e| Error::io(&self.exe, e))?;
        self.children.lock().expect("children").push(child.id());
        self.bar.set_message(point.name());
        let status = child.wait().map_err(|e| Error::io(&self.exe, e))?;
        self.children
            .lock()
            .expect("children")
            .retain(|&id| id != child.id());
        match status.code() {
            Some(0) => self.bar.inc(1),
            Some(130) | Some(143) => {}
            other => self.failures.lock().expect("failures").push(format!(
                "{}: exit {} (see {})",
                point.name(),
                other.map_or("by signal".to_string(), |c| c.to_string()),
                log_path.display()
            )),
        }
        Ok(())
    }

    /// The child process of `point`: `resume` of its run directory when it has a config,
    /// else `train` of the base config with the point's overrides.
    fn command(&self, point: &Point) -> Result<std::process::Command> {
        let dir = run_dir(self.out, point);
        let manifest = &self.plan.manifest;
        let mut cmd = std::process::Command::new(&self.exe);
        if dir.join("config.toml").exists() {
            cmd.arg("resume").arg(&dir);
        } else {
            if dir.exists() {
                // Killed between creating the directory and writing its config.
                std::fs::remove_dir_all(&dir).at(&dir)?;
            }
            cmd.arg("train")
                .arg("--config")
                .arg(base_config_path(self.out))
                .arg("--out")
                .arg(&dir);
            for o in manifest.overrides.iter().cloned().chain(point.overrides()) {
                cmd.arg("--set").arg(o);
            }
            cmd.arg("--set")
                .arg(format!("learner.intra_op_threads={}", self.intra))
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
            cmd.env(var, self.intra.to_string());
        }
        Ok(cmd)
    }
}
