//! What each command does, between the parsed command line and the library: signals, run
//! directories, printing. `main` only parses, calls [`run`] and maps errors to exit codes.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;

use crate::cli::{Cli, Command};
use crate::env::tool_use::dataset::TaskRef;
use crate::env::tool_use::json::{score_line, score_line_with, score_lines};
use crate::env::tool_use::tasks::Task;
use crate::experiments::{bench, plot, sweep};
use crate::run::{self, default_dir, print_summary, Outcome, RunOptions};
use crate::store::checkpoint;
use crate::{config, Error, Result};

/// SIGINT/SIGTERM set the code the run should exit with; a second SIGINT exits at once.
fn install_signal_handlers() -> Result<Arc<AtomicUsize>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    use signal_hook::flag;
    let code = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(AtomicBool::new(false));
    let io = |e| Error::io("signal handler", e);
    flag::register_conditional_shutdown(SIGINT, 130, seen.clone()).map_err(io)?;
    flag::register(SIGINT, seen).map_err(io)?;
    flag::register_usize(SIGINT, code.clone(), 130).map_err(io)?;
    flag::register_usize(SIGTERM, code.clone(), 143).map_err(io)?;
    Ok(code)
}

/// A transport URL must reach Redis (checked before anything is written), and needs parallel
/// mode.
fn check_transport(url: Option<&str>, serial: bool) -> Result<()> {
    let Some(url) = url else { return Ok(()) };
    if serial {
        return Err(Error::input(
            "--transport needs parallel mode (a serial run has no actors to share)",
        ));
    }
    crate::transport::redis::Link::open(url, std::time::Duration::ZERO).map(|_| ())
}

/// `actor.threads = 0` leaves the sampling to actor processes: it needs a transport.
fn check_actors(cfg: &config::Config, transport: Option<&str>, serial: bool) -> Result<()> {
    let sampled =
        cfg.env.kind != config::EnvKind::Bandit || cfg.env.mode == config::BanditMode::Sampled;
    if cfg.actor.threads == 0 && sampled && (serial || transport.is_none()) {
        return Err(Error::input(
            "actor.threads = 0 needs --transport (actor processes elsewhere do the sampling)",
        ));
    }
    Ok(())
}

/// Runs one command; returns the process exit code.
pub fn run(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Train {
            config: path,
            overrides,
            device,
            serial,
            out,
            transport,
        } => {
            check_transport(transport.as_deref(), serial)?;
            let mut cfg = config::load(&path, &overrides)?;
            if let Some(d) = device {
                cfg.device = d.into();
            }
            run::resolve_device(cfg.device)?;
            run::resolve_device(cfg.actor.device)
                .map_err(|e| Error::input(format!("actor.{e}")))?;
            run::check_inputs(&cfg)?;
            check_actors(&cfg, transport.as_deref(), serial)?;
            let dir = out.unwrap_or_else(|| default_dir("runs", &path));
            run::create_run_dir(&dir, &cfg, serial)?;
            eprintln!("run: {}", dir.display());
            let interrupt = install_signal_handlers()?;
            let outcome = run::train(
                &cfg,
                &dir,
                RunOptions {
                    serial,
                    interrupt: &interrupt,
                    progress: None,
                    transport: transport.as_deref(),
                },
                None,
            )?;
            Ok(report(&dir, outcome))
        }
        Command::Actor {
            transport,
            run,
            threads,
            device,
        } => {
            if threads == 0 {
                return Err(Error::input("--threads must be at least 1"));
            }
            run::remote_actors(&transport, &run, threads, device.map(Into::into))?;
            Ok(0)
        }
        Command::Resume { run_dir, transport } => {
            let (cfg, serial) = run::open_run_dir(&run_dir)?;
            check_transport(transport.as_deref(), serial)?;
            check_actors(&cfg, transport.as_deref(), serial)?;
            let ckpt = checkpoint::load_latest(&run_dir)?;
            let total = cfg.env.total_steps();
            if ckpt.as_ref().is_some_and(|c| c.step >= total)
                && run_dir.join("summary.json").exists()
            {
                println!("{}: already finished ({total} steps)", run_dir.display());
                return Ok(0);
            }
            match &ckpt {
                Some(c) => eprintln!("resuming {} from step {}", run_dir.display(), c.step),
                None => eprintln!(
                    "resuming {}: no checkpoint yet, starting from step 0",
                    run_dir.display()
                ),
            }
            let interrupt = install_signal_handlers()?;
            let outcome = run::train(
                &cfg,
                &run_dir,
                RunOptions {
                    serial,
                    interrupt: &interrupt,
                    progress: None,
                    transport: transport.as_deref(),
                },
                ckpt,
            )?;
            Ok(report(&run_dir, outcome))
        }
        Command::Eval {
            run_dir,
            split,
            episodes,
            dump,
        } => {
            let (step, e) = run::evaluate_run(&run_dir, split.into(), episodes, dump.as_deref())?;
            println!(
                "{} at step {step}, {episodes} {:?} episodes (greedy): completion {:.3}, tool precision {:.3} recall {:.3} F1 {:.3}, format errors {:.3}, calls {:.2}, length {:.1}",
                run_dir.display(),
                crate::env::tool_use::tasks::Split::from(split),
                e.completion, e.precision, e.recall, e.f1, e.format_errors, e.calls, e.length
            );
            Ok(0)
        }
        Command::Config {
            print_default,
            config: path,
            overrides,
        } => {
            let cfg = match path {
                Some(p) => config::load(&p, &overrides)?,
                None if print_default => config::Config::default(),
                None => {
                    return Err(Error::input(
                        "config: give --print-default or --config FILE",
                    ))
                }
            };
            print!("{}", cfg.to_toml());
            Ok(0)
        }
        Command::Score {
            task,
            file,
            config: cfg_path,
            seed,
        } => {
            let mut cfg = match cfg_path {
                Some(p) => config::load(&p, &[])?,
                None => config::Config::default(),
            };
            let input = std::fs::File::open(&file)
                .map_err(|e| Error::input(format!("cannot read {}: {e}", file.display())))?;
            let dataset = if cfg.env.kind == config::EnvKind::Dataset {
                if task.is_some() {
                    return Err(Error::input(
                        "--task: not with a dataset config (its lines are matched by \"id\")",
                    ));
                }
                Some(run::dataset_source(&cfg, None)?)
            } else {
                let Some(task) = task else {
                    return Err(Error::input(
                        "--task: needed unless the config is a dataset's",
                    ));
                };
                cfg.env.task = task.into();
                None
            };
            let task = Task::new(cfg.env.task_spec(seed.unwrap_or(cfg.seed)));
            let score = |line: &str| match &dataset {
                Some(source) => score_line_with(source, &cfg.reward, line, |id, _| {
                    let id = match id {
                        Some(serde_json::Value::String(s)) => s.clone(),
                        Some(serde_json::Value::Number(n)) => n.to_string(),
                        _ => return Err("a dataset's line needs its task's \"id\"".to_string()),
                    };
                    let (split, index) = source
                        .data
                        .position(&id)
                        .ok_or_else(|| format!("no task {id:?} in {}", cfg.env.path))?;
                    Ok(TaskRef { split, index })
                }),
                None => score_line(&task, &cfg.reward, line),
            };
            println!("line\treward\tcompletion\tprecision\trecall\tf1\tformat_errors\tcalls");
            let totals = score_lines(std::io::BufReader::new(input), score, |n, r| match r {
                Ok(s) => println!(
                    "{n}\t{:.4}\t{}\t{:.3}\t{:.3}\t{:.3}\t{}\t{}",
                    s.reward, s.completion, s.precision, s.recall, s.f1, s.format_errors, s.calls
                ),
                Err(e) => eprintln!("{}:{n}: {e}", file.display()),
            })
            .map_err(|e| Error::io(&file, e))?;
            println!(
                "scored {} of {} lines ({} bad): mean reward {:.4}, completion {:.3}, tool precision {:.3} recall {:.3} F1 {:.3}, format errors {:.3}, calls {:.2}",
                totals.means.episodes, totals.lines, totals.bad_lines, totals.means.reward, totals.means.completion,
                totals.means.precision, totals.means.recall, totals.means.f1, totals.means.format_errors, totals.means.calls
            );
            Ok(0)
        }
        Command::Sweep {
            config: path,
            grid,
            seeds,
            jobs,
            out,
            overrides,
            serial,
        } => {
            let out = out.unwrap_or_else(|| default_dir("sweeps", &path));
            let interrupt = install_signal_handlers()?;
            let args = sweep::SweepArgs {
                config: path,
                grid,
                seeds,
                jobs,
                out: out.clone(),
                overrides,
                serial,
            };
            match sweep::run(&args, &interrupt)? {
                sweep::SweepOutcome::Finished { runs, table } => {
                    print!("{table}");
                    println!(
                        "{runs} runs; {} has summary.csv, table.txt, final.png and curves.png",
                        out.display()
                    );
                    Ok(0)
                }
                sweep::SweepOutcome::Interrupted { code, done, total } => {
                    eprintln!(
                        "interrupted with {done} of {total} runs finished; continue with the same command"
                    );
                    Ok(code)
                }
                sweep::SweepOutcome::Failed { failures } => {
                    for f in &failures {
                        eprintln!("failed: {f}");
                    }
                    Err(Error::Corrupt(format!(
                        "{} sweep point(s) failed; the others are in {}/summary.csv",
                        failures.len(),
                        out.display()
                    )))
                }
            }
        }
        Command::Generate {
            model,
            prompt,
            chat,
            system,
            max_new,
            temperature,
            seed,
            json,
            device,
            precision,
        } => {
            let device = crate::device::resolve_device(device.into())?;
            let kind = precision.kind();
            let out = crate::rollout::generate::generate(&crate::rollout::generate::Request {
                model: &model,
                prompt: &prompt,
                chat,
                system: system.as_deref(),
                max_new,
                temperature,
                seed,
                device,
                kind,
            })?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "prompt_tokens": out.prompt_tokens,
                        "output_tokens": out.output_tokens,
                        "text": out.text,
                    })
                );
            } else {
                println!("{}", out.text);
            }
            Ok(0)
        }
        Command::Export {
            run_dir,
            model,
            out,
        } => {
            match (run_dir, model) {
                (Some(run), _) => {
                    let step = crate::run::export_run(&run, &out)?;
                    eprintln!("{} at step {step}", run.display());
                }
                (None, Some(model)) => {
                    crate::policy::lm::export::export_model(&model, &out)?;
                }
                (None, None) => unreachable!("clap requires RUN_DIR or --model"),
            }
            println!("{}", out.display());
            Ok(0)
        }
        Command::Bench {
            quick,
            seconds,
            python,
            no_baseline,
            device,
            json,
            lm,
            model,
            precision,
            trl,
            transport,
        } => {
            if transport {
                crate::experiments::bench_transport::run(
                    &crate::experiments::bench_transport::TransportBench {
                        secs: seconds.unwrap_or(if quick { 3.0 } else { 10.0 }),
                        json: json.as_deref(),
                    },
                )?;
                return Ok(0);
            }
            let python = if no_baseline {
                None
            } else {
                Some(python.unwrap_or_else(bench::find_python))
            };
            if trl {
                crate::experiments::bench_grpo::run(&crate::experiments::bench_grpo::GrpoBench {
                    model: &model,
                    python: python.as_deref().unwrap_or(Path::new("python3")),
                    quick,
                    json: json.as_deref(),
                })?;
                return Ok(0);
            }
            if lm {
                crate::experiments::bench_lm::run(&crate::experiments::bench_lm::LmBench {
                    model: &model,
                    secs: seconds.unwrap_or(if quick { 3.0 } else { 15.0 }),
                    python: python.as_deref(),
                    device: crate::device::resolve_device(device.into())?,
                    json: json.as_deref(),
                    kind: precision.kind(),
                })?;
                return Ok(0);
            }
            bench::run(&bench::BenchOptions {
                quick,
                python,
                json,
                device: device.into(),
                seconds,
            })?;
            Ok(0)
        }
        Command::Plot { runs, out, title } => {
            if runs.iter().all(|d| d.join("sweep.json").exists()) {
                let out = out.unwrap_or_else(|| runs[0].clone());
                for png in plot::plot_sweeps(&runs, &out)? {
                    println!("{}", png.display());
                }
                return Ok(0);
            }
            if let Some(d) = runs.iter().find(|d| d.join("sweep.json").exists()) {
                return Err(Error::input(format!(
                    "{}: a sweep; plot sweeps and runs separately",
                    d.display()
                )));
            }
            let series = plot::load_runs(&runs)?;
            let out = out.unwrap_or_else(|| match runs.as_slice() {
                [one] => one.join("curves.png"),
                _ => PathBuf::from("curves.png"),
            });
            let title = title.unwrap_or_else(|| match runs.as_slice() {
                [one] => one.display().to_string(),
                _ => "AsymRE on the bandit".into(),
            });
            plot::plot_curves(&series, plot::panels_for(&series), &title, &out)?;
            println!("{}", out.display());
            Ok(0)
        }
    }
}

fn report(dir: &Path, outcome: Outcome) -> u8 {
    match outcome {
        Outcome::Finished(s) => {
            print_summary(&s);
            if let Err(e) = write_run_plot(dir) {
                eprintln!("warning: curves.png not written: {e}");
            }
            0
        }
        Outcome::Interrupted { step, code } => {
            eprintln!(
                "interrupted: checkpoint written at step {step}; continue with `asymre resume {}`",
                dir.display()
            );
            code as u8
        }
    }
}

/// `<run>/curves.png`, written when a run finishes.
fn write_run_plot(dir: &Path) -> Result<()> {
    let series = plot::load_runs(&[dir.to_path_buf()])?;
    let png = dir.join("curves.png");
    plot::plot_curves(
        &series,
        plot::panels_for(&series),
        &dir.display().to_string(),
        &png,
    )
}
