//! What a sampled run needs of its environment, behind one trait: its actors, its part of the
//! metrics rows, evaluation, what a checkpoint keeps of it, and its summary. [`sampled_env`] and
//! [`initial_logits`] are where a run looks at `env.kind` (besides choosing the bandit's exact
//! flow, and `eval`, which is for tool use); the bandit, the tool-use tasks and users' datasets
//! implement it.
use std::sync::Arc;
use std::time::Instant;

use tch::Device;

use crate::config::{Config, EnvKind};
use crate::env::bandit::Bandit;
use crate::env::tool_use::dataset::{Dataset, DatasetSource};
use crate::env::tool_use::protocol::chat::{demonstration, ChatFormat, ChatProtocol};
use crate::env::tool_use::protocol::Limits;
use crate::env::tool_use::reward::ScoreMeans;
use crate::env::tool_use::tasks::{Split, Task};
use crate::env::tool_use::toolbox::ToolBox;
use crate::error::{Error, Result};
use crate::ids::SourceId;
use crate::math::softmax;
use crate::policy::lm::source::{read_text, resolve, ModelFiles};
use crate::policy::tabular::sampling_probs;
use crate::policy::PolicyModel;
use crate::policy::WeightSnapshot;
use crate::rl::actor::{Actor, BanditActor, ToolActor};
use crate::rl::learner::Learner;
use crate::rl::warmstart::{demos, token_demos, warm_start, WarmstartReport};
use crate::rollout::{evaluate, evaluate_with};
use crate::store::metrics::{tags, Row};

use super::device_name;
use super::recorder::Recorder;
use super::summary::{bandit_row, bandit_summary, Summary, ToolUseSummary};

/// The warm start's report, its held-out evaluation, and its seconds.
pub(super) type WarmstartRecord = (WarmstartReport, ScoreMeans, f64);

/// Builds actor `source` sampling from a snapshot; shared with the actor threads (restarts).
pub(super) type ActorBuilder =
    Arc<dyn Fn(&Config, SourceId, &WeightSnapshot) -> Result<Box<dyn Actor>> + Send + Sync>;

/// A sampled run's environment.
pub(super) trait SampledEnv: Send {
    /// How to build its actors.
    fn actors(&self) -> ActorBuilder;
    /// The actors now sample from `snapshot`.
    fn set_behaviour(&mut self, _cfg: &Config, _snapshot: &WeightSnapshot) {}
    /// The environment's part of a metrics row at the learner's step.
    fn row(&self, cfg: &Config, learner: &Learner, last_baseline: f64) -> Result<Row>;
    /// The first row's additions: the warm start's held-out evaluation, if it had one.
    fn first_row(&self, row: &mut Row) {
        if let Some((_, heldout, _)) = self.warmstart() {
            row.push(tags::HELDOUT_COMPLETION, heldout.completion)
                .push(tags::HELDOUT_F1, heldout.f1);
        }
    }
    /// Whether it is evaluated every `logging.eval_every` steps.
    fn evaluates(&self) -> bool {
        false
    }
    /// Greedy evaluation of the learner's policy on `episodes` items of `split`.
    fn evaluate(
        &self,
        _cfg: &Config,
        _learner: &Learner,
        _split: Split,
        _episodes: usize,
    ) -> Result<ScoreMeans> {
        Err(Error::Corrupt("this environment is not evaluated".into()))
    }
    /// What a checkpoint keeps of it.
    fn warmstart(&self) -> Option<WarmstartRecord> {
        None
    }
    /// The run's summary (it logs its last rows and closes the sinks first).
    fn summary(
        &self,
        cfg: &Config,
        device: Device,
        learner: &Learner,
        rec: &mut Recorder,
        last_baseline: f64,
    ) -> Result<Summary>;
}

/// The environment of `cfg`; a tool-use one warm-starts `learner` unless `saved` holds the warm
/// start of an earlier session.
pub(super) fn sampled_env(
    cfg: &Config,
    learner: &Learner,
    device: Device,
    initial: &[f64],
    saved: Option<WarmstartRecord>,
    run_dir: &std::path::Path,
) -> Result<Box<dyn SampledEnv>> {
    Ok(match cfg.env.kind {
        EnvKind::Bandit => Box::new(BanditEnv {
            bandit: Bandit::new(&cfg.env.bandit_spec(), cfg.seed),
            initial: initial.to_vec(),
            behaviour_probs: Vec::new(),
        }),
        EnvKind::ToolUse => Box::new(ToolUseEnv::new(cfg, learner, device, saved)?),
        EnvKind::Dataset => Box::new(DatasetEnv::new(cfg, learner, device, saved, run_dir)?),
    })
}

/// How to build the actors of `cfg` without a learner or a warm start: what an actor process
/// on another host needs (its weights come from the learner).
pub fn actor_builder(cfg: &Config) -> Result<ActorBuilder> {
    Ok(match cfg.env.kind {
        EnvKind::Bandit => bandit_actors(Bandit::new(&cfg.env.bandit_spec(), cfg.seed)),
        EnvKind::ToolUse => {
            tool_actors(Task::new(cfg.env.task_spec(cfg.seed)), chat_protocol(cfg)?)
        }
        EnvKind::Dataset => {
            let (files, protocol) = chat_protocol(cfg)?
                .ok_or_else(|| Error::input("env.kind = \"dataset\" needs policy.kind = \"lm\""))?;
            dataset_actors(dataset_source(cfg, None)?, files, protocol)
        }
    })
}

fn bandit_actors(bandit: Bandit) -> ActorBuilder {
    Arc::new(move |cfg, source, behaviour| {
        Ok(Box::new(BanditActor::new(
            cfg,
            source,
            bandit.clone(),
            behaviour,
        )?))
    })
}

fn tool_actors(task: Task, chat: Option<(ModelFiles, ChatProtocol)>) -> ActorBuilder {
    if let Some((files, protocol)) = chat {
        return Arc::new(move |cfg, source, behaviour| {
            Ok(Box::new(ToolActor::lm(
                cfg,
                source,
                task.clone(),
                &files,
                protocol.clone(),
                behaviour,
            )?))
        });
    }
    Arc::new(move |cfg, source, behaviour| {
        Ok(Box::new(ToolActor::new(
            cfg,
            source,
            task.clone(),
            behaviour,
        )?))
    })
}

fn dataset_actors(
    source: DatasetSource,
    files: ModelFiles,
    protocol: ChatProtocol,
) -> ActorBuilder {
    Arc::new(move |cfg, id, behaviour| {
        Ok(Box::new(ToolActor::lm(
            cfg,
            id,
            source.clone(),
            &files,
            protocol.clone(),
            behaviour,
        )?))
    })
}

/// The bandit's initial logits for the tabular policy (none for tool use).
pub(super) fn initial_logits(cfg: &Config) -> Vec<f64> {
    match cfg.env.kind {
        EnvKind::Bandit => crate::env::bandit::initial_logits(&cfg.env.bandit_spec(), cfg.seed),
        EnvKind::ToolUse | EnvKind::Dataset => Vec::new(),
    }
}

/// The bandit in sampled mode.
struct BanditEnv {
    bandit: Bandit,
    initial: Vec<f64>,
    /// μ: the behaviour policy's arm probabilities.
    behaviour_probs: Vec<f64>,
}

impl SampledEnv for BanditEnv {
    fn actors(&self) -> ActorBuilder {
        bandit_actors(self.bandit.clone())
    }

    fn set_behaviour(&mut self, cfg: &Config, snapshot: &WeightSnapshot) {
        let logits: Vec<f64> = snapshot.tensors[0].data.iter().map(|&x| x as f64).collect();
        self.behaviour_probs = sampling_probs(&logits, cfg.policy.temperature);
    }

    fn row(&self, cfg: &Config, learner: &Learner, last_baseline: f64) -> Result<Row> {
        let pi = softmax(&learner.logits()?);
        let v_mu = self.bandit.value(&self.behaviour_probs);
        Ok(bandit_row(
            learner.step,
            cfg.env.steps_per_round,
            &self.bandit,
            &pi,
            v_mu,
            last_baseline,
        ))
    }

    fn summary(
        &self,
        cfg: &Config,
        device: Device,
        learner: &Learner,
        rec: &mut Recorder,
        last_baseline: f64,
    ) -> Result<Summary> {
        rec.finish()?;
        let final_probs = softmax(&learner.logits()?);
        Ok(bandit_summary(
            cfg,
            device,
            learner.step,
            rec,
            &self.bandit,
            &self.initial,
            self.behaviour_probs.clone(),
            final_probs,
            last_baseline,
        ))
    }
}

/// A tool-use task family: on the token protocol with the small transformer, or in a pretrained
/// LM's chat format.
struct ToolUseEnv {
    task: Task,
    limits: Limits,
    warmstart: WarmstartRecord,
    /// The LM's files and chat format (`policy.kind = "lm"`).
    chat: Option<(ModelFiles, ChatProtocol)>,
}

/// Episodes an LM evaluates at a time (a bound on its KV cache).
pub(super) const LM_EVAL_BATCH: usize = 32;

/// The LM's files and chat protocol, when the policy is a pretrained LM.
pub fn chat_protocol(cfg: &Config) -> Result<Option<(ModelFiles, ChatProtocol)>> {
    let Some(model) = &cfg.policy.model else {
        return Ok(None);
    };
    let files = resolve(model)?;
    let (_, text) = read_text(&files)?;
    let format = ChatFormat::new(text, model)?;
    let protocol = ChatProtocol {
        format: Arc::new(format),
        limits: cfg.env.limits(),
    };
    Ok(Some((files, protocol)))
}

impl ToolUseEnv {
    fn new(
        cfg: &Config,
        learner: &Learner,
        device: Device,
        saved: Option<WarmstartRecord>,
    ) -> Result<Self> {
        let task = Task::new(cfg.env.task_spec(cfg.seed));
        let limits = cfg.env.limits();
        let chat = chat_protocol(cfg)?;
        let mut env = ToolUseEnv {
            task,
            limits,
            warmstart: Default::default(),
            chat,
        };
        env.warmstart = match saved {
            Some(w) => w,
            None => env.warm_start(cfg, learner, device)?,
        };
        Ok(env)
    }

    /// Behaviour cloning on scripted demonstrations, then a held-out evaluation.
    fn warm_start(
        &self,
        cfg: &Config,
        learner: &Learner,
        device: Device,
    ) -> Result<WarmstartRecord> {
        let task = &self.task;
        let trains = cfg.warmstart.steps > 0 && cfg.warmstart.demos > 0;
        if self.chat.is_some() && trains {
            let before = self.evaluate(cfg, learner, Split::Heldout, cfg.logging.eval_episodes)?;
            eprintln!(
                "before the warm start: held-out completion {:.3}, tool F1 {:.3}",
                before.completion, before.f1
            );
        }
        let started = Instant::now();
        let report = match (&learner.policy, &self.chat) {
            (PolicyModel::Lm(model), Some((_, protocol))) => {
                let demos = demos(cfg, task, |item| demonstration(protocol, task, item))?;
                warm_start(cfg, model.as_ref(), &learner.vs, &demos, device)?
            }
            (policy, _) => {
                let demos = token_demos(cfg, task)?;
                warm_start(cfg, policy.transformer()?, &learner.vs, &demos, device)?
            }
        };
        let seconds = started.elapsed().as_secs_f64();
        let heldout = self.evaluate(cfg, learner, Split::Heldout, cfg.logging.eval_episodes)?;
        eprintln!(
            "warm start: {} steps in {seconds:.1} s; held-out completion {:.3}, tool F1 {:.3}",
            report.steps, heldout.completion, heldout.f1
        );
        Ok((report, heldout, seconds))
    }
}

impl SampledEnv for ToolUseEnv {
    fn actors(&self) -> ActorBuilder {
        tool_actors(self.task.clone(), self.chat.clone())
    }

    fn row(&self, cfg: &Config, learner: &Learner, _last_baseline: f64) -> Result<Row> {
        Ok(round_row(cfg, learner))
    }

    fn evaluates(&self) -> bool {
        true
    }

    fn evaluate(
        &self,
        cfg: &Config,
        learner: &Learner,
        split: Split,
        episodes: usize,
    ) -> Result<ScoreMeans> {
        if let (PolicyModel::Lm(model), Some((_, protocol))) = (&learner.policy, &self.chat) {
            return evaluate_with(
                model.as_ref(),
                &self.task,
                protocol,
                split,
                episodes,
                LM_EVAL_BATCH,
                &cfg.reward,
                learner.device(),
                |_| {},
            );
        }
        evaluate(
            learner.policy.transformer()?,
            &self.task,
            split,
            episodes,
            self.limits,
            &cfg.reward,
            learner.device(),
            |_| {},
        )
    }

    fn warmstart(&self) -> Option<WarmstartRecord> {
        Some(self.warmstart)
    }

    fn summary(
        &self,
        cfg: &Config,
        device: Device,
        learner: &Learner,
        rec: &mut Recorder,
        _last_baseline: f64,
    ) -> Result<Summary> {
        tool_use_summary(
            self,
            format!("{:?}", self.task.spec.kind).to_lowercase(),
            cfg,
            device,
            learner,
            rec,
        )
    }
}

/// Users' tasks from a JSON-lines file (`env.kind = "dataset"`), played by a pretrained LM in its
/// chat format with the tools of `[[tools]]`. Each actor's copy of the source runs its own tool
/// workers; their stderr goes to the run's `tools.log`.
struct DatasetEnv {
    source: DatasetSource,
    files: ModelFiles,
    protocol: ChatProtocol,
    warmstart: WarmstartRecord,
}

impl DatasetEnv {
    fn new(
        cfg: &Config,
        learner: &Learner,
        device: Device,
        saved: Option<WarmstartRecord>,
        run_dir: &std::path::Path,
    ) -> Result<Self> {
        let (files, protocol) = chat_protocol(cfg)?
            .ok_or_else(|| Error::input("env.kind = dataset needs policy.model"))?;
        let source = dataset_source(cfg, Some(run_dir.join("tools.log")))?;
        let mut env = DatasetEnv {
            source,
            files,
            protocol,
            warmstart: Default::default(),
        };
        env.warmstart = match saved {
            Some(w) => w,
            None => env.warm_start(cfg, learner, device)?,
        };
        Ok(env)
    }

    /// Supervised fine-tuning on the tasks that have gold calls or need none (their calls run
    /// for real, then the gold answer), then a held-out evaluation.
    fn warm_start(
        &self,
        cfg: &Config,
        learner: &Learner,
        device: Device,
    ) -> Result<WarmstartRecord> {
        let PolicyModel::Lm(model) = &learner.policy else {
            return Err(Error::input("env.kind = dataset needs policy.kind = lm"));
        };
        let trains = cfg.warmstart.steps > 0 && cfg.warmstart.demos > 0;
        if trains {
            let before = self.evaluate(cfg, learner, Split::Heldout, cfg.logging.eval_episodes)?;
            eprintln!(
                "before the warm start: held-out completion {:.3}, tool F1 {:.3}",
                before.completion, before.f1
            );
        }
        let started = Instant::now();
        let source = &self.source;
        let demos = demos(cfg, source, |item| {
            demonstration(&self.protocol, source, item)
        })?;
        let report = warm_start(cfg, model.as_ref(), &learner.vs, &demos, device)?;
        let seconds = started.elapsed().as_secs_f64();
        let heldout = self.evaluate(cfg, learner, Split::Heldout, cfg.logging.eval_episodes)?;
        eprintln!(
            "warm start: {} steps in {seconds:.1} s; held-out completion {:.3}, tool F1 {:.3}",
            report.steps, heldout.completion, heldout.f1
        );
        Ok((report, heldout, seconds))
    }
}

/// Checks what a run reads besides its config before anything is written: a dataset's every
/// line (`FILE:LINE: reason` for each bad one).
pub fn check_inputs(cfg: &Config) -> Result<()> {
    if cfg.env.kind == EnvKind::Dataset {
        dataset_source(cfg, None)?;
    }
    Ok(())
}

/// The dataset of `cfg` with its tools; external tools' stderr goes to `tools_log`.
pub fn dataset_source(
    cfg: &Config,
    tools_log: Option<std::path::PathBuf>,
) -> Result<DatasetSource> {
    let tools: Arc<[crate::config::ToolConfig]> = cfg.tools.clone().into();
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
    let data = Dataset::load(std::path::Path::new(&cfg.env.path), &names)?;
    Ok(DatasetSource {
        data: Arc::new(data),
        tools: ToolBox::new(tools.clone(), tools_log),
        seed: cfg.seed,
    })
}

impl SampledEnv for DatasetEnv {
    fn actors(&self) -> ActorBuilder {
        dataset_actors(
            self.source.clone(),
            self.files.clone(),
            self.protocol.clone(),
        )
    }

    fn row(&self, cfg: &Config, learner: &Learner, _last_baseline: f64) -> Result<Row> {
        Ok(round_row(cfg, learner))
    }

    fn evaluates(&self) -> bool {
        true
    }

    fn evaluate(
        &self,
        cfg: &Config,
        learner: &Learner,
        split: Split,
        episodes: usize,
    ) -> Result<ScoreMeans> {
        let PolicyModel::Lm(model) = &learner.policy else {
            return Err(Error::input("env.kind = dataset needs policy.kind = lm"));
        };
        evaluate_with(
            model.as_ref(),
            &self.source,
            &self.protocol,
            split,
            episodes.min(self.source.data.split(split).len().max(1)),
            LM_EVAL_BATCH,
            &cfg.reward,
            learner.device(),
            |_| {},
        )
    }

    fn warmstart(&self) -> Option<WarmstartRecord> {
        Some(self.warmstart)
    }

    fn summary(
        &self,
        cfg: &Config,
        device: Device,
        learner: &Learner,
        rec: &mut Recorder,
        _last_baseline: f64,
    ) -> Result<Summary> {
        tool_use_summary(self, "dataset".into(), cfg, device, learner, rec)
    }
}

/// A tool-use row's own part: the step and its round.
fn round_row(cfg: &Config, learner: &Learner) -> Row {
    let mut row = Row::new(learner.step);
    row.push(tags::ROUND, (learner.step / cfg.env.steps_per_round) as f64);
    row
}

/// The end of a tool-use run (built-in tasks or a dataset): greedy held-out and train
/// evaluations, the last metrics row, and the summary naming `task`.
fn tool_use_summary(
    env: &dyn SampledEnv,
    task: String,
    cfg: &Config,
    device: Device,
    learner: &Learner,
    rec: &mut Recorder,
) -> Result<Summary> {
    let episodes = cfg.logging.eval_episodes;
    let final_heldout = env.evaluate(cfg, learner, Split::Heldout, episodes)?;
    let final_train = env.evaluate(cfg, learner, Split::Train, episodes)?;
    let mut row = Row::new(learner.step);
    row.push(tags::HELDOUT_COMPLETION, final_heldout.completion)
        .push(tags::HELDOUT_F1, final_heldout.f1);
    rec.log(row, 0)?;
    rec.finish()?;
    let (warmstart, warmstart_heldout, warmstart_seconds) = env.warmstart().unwrap_or_default();
    Ok(Summary {
        mode: "tool_use".into(),
        device: device_name(device),
        steps: learner.step,
        wall_time: rec.wall_time(),
        last: rec.last_row_json(),
        bandit: None,
        tool_use: Some(ToolUseSummary {
            task,
            warmstart_heldout,
            final_heldout,
            final_train,
            warmstart,
            warmstart_seconds,
        }),
    })
}
