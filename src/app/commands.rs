//! What each command does, between the parsed command line and the library: signals, run
//! directories, printing. `main` only parses, calls [`run`] and maps errors to exit codes.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;

use crate::app::cli::{
    ActorArgs, BenchArgs, BfclArgs, BfclSplitArg, Cli, Command, ConfigArgs, EvalArgs, ExportArgs,
    GenerateArgs, PlotArgs, ResumeArgs, ScoreArgs, SweepArgs, TrainArgs,
};
use crate::app::experiments::{bench, plot, sweep};
use crate::env::tool_use::json::score_lines;
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
    let sampled = !cfg.env.exact_flow();
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
        Command::Train(args) => train(args),
        Command::Resume(args) => resume(args),
        Command::Actor(args) => actor(args),
        Command::Eval(args) => eval(args),
        Command::Generate(args) => generate(args),
        Command::Export(args) => export(args),
        Command::Config(args) => print_config(args),
        Command::Score(args) => score(args),
        Command::Sweep(args) => sweep(args),
        Command::Plot(args) => plot_dirs(args),
        Command::Bench(args) => bench(args),
        Command::Bfcl(args) => bfcl_judge(args),
    }
}

/// `asymre train`: checks everything it reads, writes a new run directory, trains.
fn train(args: TrainArgs) -> Result<u8> {
    let transport = args.transport.as_deref();
    check_transport(transport, args.serial)?;
    let mut cfg = config::load(&args.config, &args.overrides)?;
    if let Some(d) = args.device {
        cfg.device = d.into();
    }
    run::resolve_device(cfg.device)?;
    run::resolve_device(cfg.actor.device).map_err(|e| Error::input(format!("actor.{e}")))?;
    run::check_inputs(&cfg)?;
    check_actors(&cfg, transport, args.serial)?;
    let dir = args
        .out
        .unwrap_or_else(|| default_dir("runs", &args.config));
    run::create_run_dir(&dir, &cfg, args.serial)?;
    eprintln!("run: {}", dir.display());
    train_in(&cfg, &dir, args.serial, transport, None)
}

/// Trains `cfg` in `dir` (from `resume`), stopping with a checkpoint at SIGINT/SIGTERM; prints
/// the summary or how to resume, and returns the exit code.
fn train_in(
    cfg: &config::Config,
    dir: &Path,
    serial: bool,
    transport: Option<&str>,
    resume: Option<checkpoint::Checkpoint>,
) -> Result<u8> {
    let interrupt = install_signal_handlers()?;
    let opts = RunOptions {
        serial,
        interrupt: &interrupt,
        progress: None,
        transport,
    };
    let outcome = run::train(cfg, dir, opts, resume)?;
    Ok(report(dir, outcome))
}

/// `asymre resume`: continues a run from its last checkpoint (or from the start).
fn resume(args: ResumeArgs) -> Result<u8> {
    let run_dir = args.run_dir;
    let transport = args.transport.as_deref();
    let (cfg, serial) = run::open_run_dir(&run_dir)?;
    check_transport(transport, serial)?;
    check_actors(&cfg, transport, serial)?;
    let ckpt = checkpoint::load_latest(&run_dir)?;
    let total = cfg.env.total_steps();
    if ckpt.as_ref().is_some_and(|c| c.step >= total) && run_dir.join("summary.json").exists() {
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
    train_in(&cfg, &run_dir, serial, transport, ckpt)
}

/// `asymre actor`: joins a run through Redis from any host.
fn actor(args: ActorArgs) -> Result<u8> {
    if args.threads == 0 {
        return Err(Error::input("--threads must be at least 1"));
    }
    let device = args.device.map(Into::into);
    run::remote_actors(&args.transport, &args.run, args.threads, device)?;
    Ok(0)
}

/// `asymre eval`: greedy evaluation of a run's last checkpoint.
fn eval(args: EvalArgs) -> Result<u8> {
    let split = args.split.into();
    let (step, e) = run::evaluate_run(&args.run_dir, split, args.episodes, args.dump.as_deref())?;
    println!(
        "{} at step {step}, {} {split:?} episodes (greedy): completion {:.3}, tool precision {:.3} recall {:.3} F1 {:.3}, format errors {:.3}, calls {:.2}, length {:.1}",
        args.run_dir.display(),
        e.episodes,
        e.completion, e.precision, e.recall, e.f1, e.format_errors, e.calls, e.length
    );
    Ok(0)
}

/// `asymre config`: a config resolved, or the default one.
fn print_config(args: ConfigArgs) -> Result<u8> {
    let cfg = match args.config {
        Some(p) => config::load(&p, &args.overrides)?,
        None if args.print_default => config::Config::default(),
        None => {
            return Err(Error::input(
                "config: give --print-default or --config FILE",
            ))
        }
    };
    print!("{}", cfg.to_toml());
    Ok(0)
}

/// `asymre score`: JSON-lines episodes of any model scored with the task's rewards.
fn score(args: ScoreArgs) -> Result<u8> {
    let mut cfg = match &args.config {
        Some(p) => config::load(p, &[])?,
        None => config::Config::default(),
    };
    if let Some(seed) = args.seed {
        cfg.seed = seed;
    }
    let cfg = cfg.for_scoring(args.task.map(Into::into))?;
    let file = &args.file;
    let input = std::fs::File::open(file)
        .map_err(|e| Error::input(format!("cannot read {}: {e}", file.display())))?;
    let score = run::line_scorer(&cfg)?;
    println!("line\treward\tcompletion\tprecision\trecall\tf1\tformat_errors\tcalls");
    let totals = score_lines(std::io::BufReader::new(input), score, |n, r| match r {
        Ok(s) => println!(
            "{n}\t{:.4}\t{}\t{:.3}\t{:.3}\t{:.3}\t{}\t{}",
            s.reward, s.completion, s.precision, s.recall, s.f1, s.format_errors, s.calls
        ),
        Err(e) => eprintln!("{}:{n}: {e}", file.display()),
    })
    .map_err(|e| Error::io(file, e))?;
    let m = &totals.means;
    println!(
        "scored {} of {} lines ({} bad): mean reward {:.4}, completion {:.3}, tool precision {:.3} recall {:.3} F1 {:.3}, format errors {:.3}, calls {:.2}",
        m.episodes, totals.lines, totals.bad_lines, m.reward, m.completion,
        m.precision, m.recall, m.f1, m.format_errors, m.calls
    );
    Ok(0)
}

/// `asymre sweep`: a grid of runs, resumably.
fn sweep(args: SweepArgs) -> Result<u8> {
    let out = args
        .out
        .unwrap_or_else(|| default_dir("sweeps", &args.config));
    let interrupt = install_signal_handlers()?;
    let sweep_args = sweep::SweepArgs {
        config: args.config,
        grid: args.grid,
        seeds: args.seeds,
        jobs: args.jobs,
        out: out.clone(),
        overrides: args.overrides,
        serial: args.serial,
    };
    match sweep::run(&sweep_args, &interrupt)? {
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

/// `asymre generate`: a prompt continued by a pretrained LM.
fn generate(args: GenerateArgs) -> Result<u8> {
    use crate::rollout::generate::{generate, Request};
    let device = crate::device::resolve_device(args.device.into())?;
    let out = generate(&Request {
        model: &args.model,
        prompt: &args.prompt,
        chat: args.chat,
        system: args.system.as_deref(),
        max_new: args.max_new,
        temperature: args.temperature,
        seed: args.seed,
        device,
        kind: args.precision.kind(),
    })?;
    if args.json {
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

/// `asymre export`: a run's LM or a model as a Hugging Face directory.
fn export(args: ExportArgs) -> Result<u8> {
    match (args.run_dir, args.model) {
        (Some(run), _) => {
            let step = crate::run::export_run(&run, &args.out)?;
            eprintln!("{} at step {step}", run.display());
        }
        (None, Some(model)) => {
            crate::policy::lm::export::export_model(&model, &args.out)?;
        }
        (None, None) => unreachable!("clap requires RUN_DIR or --model"),
    }
    println!("{}", args.out.display());
    Ok(0)
}

/// `asymre bfcl`: a model or a run judged on BFCL's single-turn categories.
fn bfcl_judge(args: BfclArgs) -> Result<u8> {
    use crate::app::experiments::bfcl::{run, table, Request, Which};
    let named = match (&args.run_dir, &args.model) {
        (Some(dir), _) => dir.clone(),
        (None, model) => PathBuf::from(model.as_deref().unwrap_or("model")),
    };
    let out = args
        .out
        .unwrap_or_else(|| default_dir("bfcl", &named.with_extension("")));
    let req = Request {
        model: args.model,
        run_dir: args.run_dir,
        categories: args.categories,
        which: match args.split {
            BfclSplitArg::Heldout => Which::Heldout,
            BfclSplitArg::Train => Which::Train,
            BfclSplitArg::All => Which::All,
        },
        limit: args.limit,
        data: args.data,
        out: out.clone(),
        max_tokens: args.max_tokens,
        max_new_tokens: args.max_new_tokens,
        batch: args.batch as usize,
        device: args.device.map(Into::into),
    };
    let started = std::time::Instant::now();
    let scores = run(&req)?;
    print!("{}", table(&scores));
    println!(
        "{} tasks in {:.0} s; results, messages logs, summary.json and table.txt in {}",
        scores.iter().map(|c| c.tasks).sum::<usize>(),
        started.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(0)
}

/// `asymre bench`: the throughput benchmarks.
fn bench(args: BenchArgs) -> Result<u8> {
    use crate::app::experiments::{bench_grpo, bench_lm, bench_transport};
    let secs = |quick: f64, full: f64| {
        args.seconds
            .unwrap_or(if args.quick { quick } else { full })
    };
    if args.transport {
        bench_transport::run(&bench_transport::TransportBench {
            secs: secs(3.0, 10.0),
            json: args.json.as_deref(),
        })?;
        return Ok(0);
    }
    let python = match (args.no_baseline, args.python.clone()) {
        (true, _) => None,
        (false, given) => Some(given.unwrap_or_else(bench::find_python)),
    };
    if let Some(report) = &args.replay {
        bench_grpo::replay(report)?;
    } else if args.decoding {
        bench_lm::decoding(
            &args.model,
            &args.decode_weights.0,
            (128, 48),
            &[1, 16],
            secs(3.0, 10.0),
        )?;
    } else if args.trl {
        let decode_weights = match args.decode_weights.0[..] {
            [one] => one,
            _ => return Err(Error::input(
                "--decode-weights with --trl takes one value (what asymre's actors decode from)",
            )),
        };
        bench_grpo::run(&bench_grpo::GrpoBench {
            decode_weights,
            model: &args.model,
            python: python.as_deref().unwrap_or(Path::new("python3")),
            quick: args.quick,
            workloads: &args.workloads.0,
            contention: args.contention,
            json: args.json.as_deref(),
        })?;
    } else if args.lm {
        bench_lm::run(&bench_lm::LmBench {
            model: &args.model,
            secs: secs(3.0, 15.0),
            python: python.as_deref(),
            device: crate::device::resolve_device(args.device.into())?,
            json: args.json.as_deref(),
            kind: args.precision.kind(),
        })?;
    } else {
        bench::run(&bench::BenchOptions {
            quick: args.quick,
            python,
            json: args.json.clone(),
            device: args.device.into(),
            seconds: args.seconds,
        })?;
    }
    Ok(0)
}

/// `asymre plot`: curves of runs, or a sweep's figures.
fn plot_dirs(args: PlotArgs) -> Result<u8> {
    let runs = args.runs;
    if runs.iter().all(|d| d.join("sweep.json").exists()) {
        let out = args.out.unwrap_or_else(|| runs[0].clone());
        for png in plot::plot_sweeps(&runs, &out, args.title.as_deref())? {
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
    let out = args.out.unwrap_or_else(|| match runs.as_slice() {
        [one] => one.join("curves.png"),
        _ => PathBuf::from("curves.png"),
    });
    let title = args.title.unwrap_or_else(|| match runs.as_slice() {
        [one] => one.display().to_string(),
        many => format!("{} runs", many.len()),
    });
    plot::plot_curves(&series, plot::panels_for(&series), &title, &out)?;
    println!("{}", out.display());
    Ok(0)
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
