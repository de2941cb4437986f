//! `asymre bfcl`: a model (a name, a GGUF file, a Hugging Face directory, or a run's last
//! checkpoint) played greedily on BFCL's categories in its chat format: the single-turn ones
//! graded by the calls rule (BFCL's AST checker), with the leaderboard's AST columns as a table;
//! the multi-turn ones played against BFCL's API classes (a session per conversation) and graded
//! by the state rule. Each category's outputs are written as BFCL result lines and as OpenAI
//! `messages` logs (the single-turn ones read back by `asymre score --config`).
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{json, Map, Value};

use crate::config::{Config, EnvKind, PolicyKind};
use crate::env::tool_use::bfcl::multi::{load_multi, py_call, MultiEntry, MULTI_CATEGORIES};
use crate::env::tool_use::bfcl::source::BfclSource;
use crate::env::tool_use::bfcl::{self, id_hash, split_of, Entry};
use crate::env::tool_use::protocol::chat::ChatProtocol;
use crate::env::tool_use::reward::RewardConfig;
use crate::env::tool_use::stateful::StatefulSource;
use crate::env::{Protocol, Split, TaskSource};
use crate::error::{Error, IoContext, Result};
use crate::policy::lm::Lm;
use crate::policy::{PolicyModel, ToolPolicy};
use crate::rollout::Player;

/// Which tasks of a non-live category are played (the live ones, never trained on, are always
/// played whole).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Heldout,
    Train,
    All,
}

/// What to evaluate, and how.
#[derive(Debug, Clone)]
pub struct Request {
    /// A model name, GGUF file or Hugging Face directory (when `run_dir` is `None`).
    pub model: Option<String>,
    /// A run whose last checkpoint is evaluated.
    pub run_dir: Option<PathBuf>,
    pub categories: Vec<String>,
    pub which: Which,
    /// At most this many tasks per category, those of smallest [`id_hash`].
    pub limit: Option<usize>,
    /// BFCL's data directory (`None`: the installed package's).
    pub data: Option<PathBuf>,
    pub out: PathBuf,
    /// The longest episode, prompt included; a task whose prompt leaves less than
    /// [`MIN_ANSWER`] tokens is not played (and counts as wrong).
    pub max_tokens: usize,
    pub max_new_tokens: usize,
    /// Episodes decoded together.
    pub batch: usize,
    /// The device (`None`: the run's, or the CPU for a model).
    pub device: Option<crate::config::DeviceChoice>,
}

/// The fewest tokens a prompt must leave for the answer within `max_tokens`.
pub const MIN_ANSWER: usize = 64;

/// One category's result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CategoryScore {
    pub category: String,
    /// Tasks evaluated (played or not).
    pub tasks: usize,
    /// Tasks not played: their prompt does not fit (counted wrong).
    pub not_run: usize,
    /// Tasks BFCL's checker calls right.
    pub correct: usize,
    pub seconds: f64,
}

impl CategoryScore {
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.tasks.max(1) as f64
    }
}

/// A task with an id and a category.
trait Task {
    fn id(&self) -> &str;
    fn category(&self) -> &str;
}

impl Task for Entry {
    fn id(&self) -> &str {
        &self.id
    }
    fn category(&self) -> &str {
        &self.category
    }
}

impl Task for MultiEntry {
    fn id(&self) -> &str {
        &self.id
    }
    fn category(&self) -> &str {
        &self.category
    }
}

/// The tasks of `category` that `which` and `limit` select, in BFCL's order.
fn select<E: Task>(entries: Vec<E>, which: Which, limit: Option<usize>) -> Vec<E> {
    let live = entries
        .first()
        .is_some_and(|e| e.category().starts_with("live"));
    let mut chosen: Vec<(usize, E)> = entries
        .into_iter()
        .filter(|e| {
            live || match which {
                Which::All => true,
                Which::Heldout => split_of(e.id()) == Split::Heldout,
                Which::Train => split_of(e.id()) == Split::Train,
            }
        })
        .enumerate()
        .collect();
    if let Some(n) = limit {
        chosen.sort_by_key(|(_, e)| id_hash(e.id()));
        chosen.truncate(n);
        chosen.sort_by_key(|(i, _)| *i);
    }
    chosen.into_iter().map(|(_, e)| e).collect()
}

/// The config, policy and device of the request: a run's, or a plain pretrained model's.
fn load(req: &Request) -> Result<(Config, tch::nn::VarStore, PolicyModel, tch::Device)> {
    let mut cfg = match (&req.run_dir, &req.model) {
        (Some(dir), _) => crate::run::open_run_dir(dir)?.0,
        (None, Some(model)) => {
            let mut cfg = Config::default();
            cfg.env.kind = EnvKind::Bfcl;
            cfg.policy.kind = PolicyKind::Lm;
            cfg.policy.model = Some(model.clone());
            cfg.learner.intra_op_threads =
                std::thread::available_parallelism().map_or(1, |n| n.get());
            cfg
        }
        (None, None) => return Err(Error::input("bfcl: give a RUN_DIR or --model")),
    };
    if cfg.policy.kind != PolicyKind::Lm {
        return Err(Error::input(
            "bfcl: the run's policy is not a pretrained LM (policy.kind = \"lm\")",
        ));
    }
    if let Some(d) = req.device {
        cfg.device = d;
    }
    cfg.env.max_tokens = req.max_tokens;
    cfg.env.max_new_tokens = req.max_new_tokens;
    cfg.env.max_turns = 1;
    match &req.run_dir {
        Some(dir) => {
            let (_, vs, policy, device) = crate::run::load_run_policy(dir, &cfg)?;
            Ok((cfg, vs, policy, device))
        }
        None => {
            tch::set_num_threads(cfg.learner.intra_op_threads as i32);
            let device = crate::device::resolve_device(cfg.device)?;
            let (vs, policy) = PolicyModel::load(&cfg, device, &[])?;
            Ok((cfg, vs, policy, device))
        }
    }
}

/// A calls list as BFCL's result line writes it: `[{name: {arguments}}]`.
fn result_calls(calls: &[(String, Value)]) -> Value {
    Value::Array(
        calls
            .iter()
            .map(|(name, args)| {
                let mut m = Map::new();
                m.insert(name.clone(), args.clone());
                Value::Object(m)
            })
            .collect(),
    )
}

/// An output file in `out`, created (never overwriting).
fn create(out: &Path, name: &str) -> Result<std::io::BufWriter<std::fs::File>> {
    let path = out.join(name);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .at(&path)?;
    Ok(std::io::BufWriter::new(file))
}

/// Plays and grades every selected task; writes `BFCL_v4_<category>_result.json`,
/// `<category>.messages.jsonl`, `summary.json` and `table.txt` into `req.out` (which must not
/// exist or be empty). Returns the scores, category by category.
pub fn run(req: &Request) -> Result<Vec<CategoryScore>> {
    if req.limit == Some(0) {
        return Err(Error::input("--limit: must be >= 1, got 0"));
    }
    if req.max_tokens <= MIN_ANSWER {
        return Err(Error::input(format!(
            "--max-tokens: must be > {MIN_ANSWER}, got {}",
            req.max_tokens
        )));
    }
    let dir = match &req.data {
        Some(d) => d.clone(),
        None => bfcl::data_dir()?,
    };
    // Every category is read (and checked) before the model is loaded.
    let mut chosen = Vec::new();
    for category in &req.categories {
        let tasks = if MULTI_CATEGORIES.contains(&category.as_str()) {
            Tasks::Multi(select(load_multi(&dir, category)?, req.which, req.limit))
        } else {
            Tasks::Single(select(bfcl::load(&dir, category)?, req.which, req.limit))
        };
        chosen.push((category.clone(), tasks));
    }
    if req.out.exists() && std::fs::read_dir(&req.out).at(&req.out)?.next().is_some() {
        return Err(Error::input(format!(
            "--out: {} exists and is not empty",
            req.out.display()
        )));
    }
    let (cfg, _vs, policy, device) = load(req)?;
    let protocol = crate::run::chat_protocol(&cfg)?;
    let lm = <Lm as ToolPolicy>::of(&policy)?;
    std::fs::create_dir_all(&req.out).at(&req.out)?;
    let total: usize = chosen.iter().map(|(_, e)| e.len()).sum();
    let bar = super::progress_bar(total as u64, "tasks");
    let mut scores = Vec::new();
    for (category, tasks) in chosen {
        bar.set_message(category.clone());
        let score = match tasks {
            Tasks::Single(entries) => {
                play_category(req, &protocol, lm, device, &category, entries, &bar)?
            }
            Tasks::Multi(entries) => {
                play_multi(req, &dir, &protocol, lm, device, &category, entries, &bar)?
            }
        };
        scores.push(score);
    }
    bar.finish_and_clear();
    let summary = json!({
        "model": req.model,
        "run_dir": req.run_dir,
        "which": format!("{:?}", req.which).to_lowercase(),
        "limit": req.limit,
        "max_tokens": req.max_tokens,
        "categories": scores,
    });
    let mut f = create(&req.out, "summary.json")?;
    writeln!(
        f,
        "{}",
        serde_json::to_string_pretty(&summary).expect("json")
    )
    .and_then(|()| f.flush())
    .at(req.out.join("summary.json"))?;
    let mut f = create(&req.out, "table.txt")?;
    f.write_all(table(&scores).as_bytes())
        .and_then(|()| f.flush())
        .at(req.out.join("table.txt"))?;
    Ok(scores)
}

/// A category's selected tasks.
enum Tasks {
    Single(Vec<Entry>),
    Multi(Vec<MultiEntry>),
}

impl Tasks {
    fn len(&self) -> usize {
        match self {
            Tasks::Single(e) => e.len(),
            Tasks::Multi(e) => e.len(),
        }
    }
}

/// Writes a category's result lines and messages logs, each given in the category's order.
fn write_outputs(req: &Request, category: &str, lines: &[(usize, String, String)]) -> Result<()> {
    let results: String = lines.iter().map(|(_, r, _)| r.as_str()).collect();
    let messages: String = lines.iter().map(|(_, _, m)| m.as_str()).collect();
    for (name, text) in [
        (format!("BFCL_v4_{category}_result.json"), results),
        (format!("{category}.messages.jsonl"), messages),
    ] {
        let mut f = create(&req.out, &name)?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.flush())
            .at(req.out.join(&name))?;
    }
    Ok(())
}

/// BFCL's most model steps in one user turn (`MAXIMUM_STEP_LIMIT`).
const STEP_LIMIT: usize = 20;

/// One multi-turn category: each conversation played greedily against a session of BFCL's API
/// classes (`scripts/pytools.py --bfcl`), its later user turns forced as the turns before end,
/// graded by the state rule. Result lines hold, per user turn, the calls made (Python form).
#[allow(clippy::too_many_arguments)]
fn play_multi(
    req: &Request,
    dir: &Path,
    protocol: &ChatProtocol,
    lm: &Lm,
    device: tch::Device,
    category: &str,
    entries: Vec<MultiEntry>,
    bar: &indicatif::ProgressBar,
) -> Result<CategoryScore> {
    let started = Instant::now();
    let tasks = entries.len();
    let mut limits = protocol.limits;
    limits.max_turns = STEP_LIMIT;
    limits.max_calls = usize::MAX;
    let protocol = ChatProtocol {
        format: protocol.format.clone(),
        limits,
    };
    let log = Some(req.out.join("tools.log"));
    let all = StatefulSource::bfcl_tasks(dir, Vec::new(), entries, 0, log.clone())?;
    let lengths: Vec<Option<usize>> = (0..tasks)
        .map(|i| {
            let item = all.item(Split::Heldout, i as u64);
            Protocol::<StatefulSource>::start(&protocol, &all, item)
                .ok()
                .map(|ep| ep.prompt_len)
                .filter(|&n| n + MIN_ANSWER <= req.max_tokens)
        })
        .collect();
    let mut order: Vec<(usize, usize)> = (0..tasks)
        .filter_map(|i| lengths[i].map(|n| (n, i)))
        .collect();
    order.sort_unstable();
    let playable: Vec<MultiEntry> = order
        .iter()
        .map(|&(_, i)| all.entry(&all.item(Split::Heldout, i as u64)).clone())
        .collect();
    let position: HashMap<String, usize> = playable
        .iter()
        .zip(&order)
        .map(|(e, &(_, i))| (e.id.clone(), i))
        .collect();
    let not_run = tasks - playable.len();
    bar.inc(not_run as u64);
    let mut lines: Vec<(usize, String, String)> = Vec::with_capacity(playable.len());
    let mut correct = 0;
    if !playable.is_empty() {
        let n = playable.len();
        let source = StatefulSource::bfcl_tasks(dir, Vec::new(), playable, 0, log)?;
        let player = Player {
            model: lm,
            task: &source,
            protocol: &protocol,
            device,
        };
        let means = player.evaluate(
            Split::Heldout,
            n,
            req.batch,
            &RewardConfig::default(),
            |ep| {
                let id = source.item_id(&ep.item).unwrap_or_default();
                let at = position.get(&id).copied().unwrap_or(usize::MAX);
                let turns = source.entry(&ep.item).turns.len();
                let calls: Vec<Vec<String>> = ep
                    .attempt
                    .calls_by_turn(turns)
                    .iter()
                    .map(|t| t.iter().map(|(name, args)| py_call(name, args)).collect())
                    .collect();
                let graded = ep.attempt.graded.clone();
                let line = json!({"id": id, "result": calls, "graded": graded});
                let log = protocol.episode_json(&source, ep).to_string();
                lines.push((at, format!("{line}\n"), format!("{log}\n")));
                bar.inc(1);
            },
        )?;
        correct = (means.completion * n as f64).round() as usize;
    }
    lines.sort_by_key(|(at, _, _)| *at);
    write_outputs(req, category, &lines)?;
    Ok(CategoryScore {
        category: category.to_string(),
        tasks,
        not_run,
        correct,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// One category: its playable tasks decoded greedily in batches, each graded and written.
fn play_category(
    req: &Request,
    protocol: &ChatProtocol,
    lm: &Lm,
    device: tch::Device,
    category: &str,
    entries: Vec<Entry>,
    bar: &indicatif::ProgressBar,
) -> Result<CategoryScore> {
    let started = Instant::now();
    let tasks = entries.len();
    let all = BfclSource::from_splits(Vec::new(), entries, 0);
    // The prompt length of each task that fits.
    let lengths: Vec<Option<usize>> = (0..tasks)
        .map(|i| {
            let item = all.item(Split::Heldout, i as u64);
            Protocol::<BfclSource>::start(protocol, &all, item)
                .ok()
                .map(|ep| ep.prompt_len)
                .filter(|&n| n + MIN_ANSWER <= req.max_tokens)
        })
        .collect();
    // Played shortest first, so that a batch's prompts are of about one length (little
    // padding); written back in the category's order.
    let mut order: Vec<(usize, usize)> = (0..tasks)
        .filter_map(|i| lengths[i].map(|n| (n, i)))
        .collect();
    order.sort_unstable();
    let playable: Vec<Entry> = order
        .iter()
        .map(|&(_, i)| all.task(&all.item(Split::Heldout, i as u64)).entry.clone())
        .collect();
    let position: HashMap<String, usize> = playable
        .iter()
        .zip(&order)
        .map(|(e, &(_, i))| (e.id.clone(), i))
        .collect();
    let not_run = tasks - playable.len();
    bar.inc(not_run as u64);
    let mut lines: Vec<(usize, String, String)> = Vec::with_capacity(playable.len());
    let mut correct = 0;
    if !playable.is_empty() {
        let n = playable.len();
        let source = BfclSource::from_splits(Vec::new(), playable, 0);
        let player = Player {
            model: lm,
            task: &source,
            protocol,
            device,
        };
        let means = player.evaluate(
            Split::Heldout,
            n,
            req.batch,
            &RewardConfig::default(),
            |ep| {
                let id = source.item_id(&ep.item).unwrap_or_default();
                let at = position.get(&id).copied().unwrap_or(usize::MAX);
                let line = json!({"id": id, "result": result_calls(&ep.attempt.raw_calls)});
                let log = protocol.episode_json(&source, ep).to_string();
                lines.push((at, format!("{line}\n"), format!("{log}\n")));
                bar.inc(1);
            },
        )?;
        // Completion is 0 or 1 per episode: its mean times the episodes counts the right ones.
        correct = (means.completion * n as f64).round() as usize;
    }
    lines.sort_by_key(|(at, _, _)| *at);
    write_outputs(req, category, &lines)?;
    Ok(CategoryScore {
        category: category.to_string(),
        tasks,
        not_run,
        correct,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The non-live AST categories averaged without weights, as the leaderboard's non-live column.
const NON_LIVE: [&str; 4] = ["simple_python", "multiple", "parallel", "parallel_multiple"];
/// The live AST categories, averaged weighted by their tasks, as the leaderboard's live column.
const LIVE: [&str; 4] = [
    "live_simple",
    "live_multiple",
    "live_parallel",
    "live_parallel_multiple",
];

/// The table: accuracy per category, then the non-live average (unweighted over
/// `simple_python`, `multiple`, `parallel`, `parallel_multiple`), the live average (weighted
/// by tasks over the four live AST categories) and the irrelevance categories, each only when
/// all its categories were evaluated.
pub fn table(scores: &[CategoryScore]) -> String {
    let mut s = format!(
        "{:<24} {:>6} {:>8} {:>8} {:>9}\n",
        "category", "tasks", "not run", "correct", "accuracy"
    );
    for c in scores {
        s.push_str(&format!(
            "{:<24} {:>6} {:>8} {:>8} {:>8.1}%\n",
            c.category,
            c.tasks,
            c.not_run,
            c.correct,
            100.0 * c.accuracy()
        ));
    }
    let find = |name: &str| scores.iter().find(|c| c.category == name);
    let non_live: Option<Vec<&CategoryScore>> = NON_LIVE.iter().map(|n| find(n)).collect();
    if let Some(cs) = non_live {
        let mean = cs.iter().map(|c| c.accuracy()).sum::<f64>() / cs.len() as f64;
        s.push_str(&format!(
            "{:<24} {:>42.1}%\n",
            "non-live AST (mean)",
            100.0 * mean
        ));
    }
    let live: Option<Vec<&CategoryScore>> = LIVE.iter().map(|n| find(n)).collect();
    if let Some(cs) = live {
        let (right, all) = cs
            .iter()
            .fold((0, 0), |(r, a), c| (r + c.correct, a + c.tasks));
        s.push_str(&format!(
            "{:<24} {:>42.1}%\n",
            "live AST (weighted)",
            100.0 * right as f64 / all.max(1) as f64
        ));
    }
    let multi: Option<Vec<&CategoryScore>> = MULTI_CATEGORIES.iter().map(|n| find(n)).collect();
    if let Some(cs) = multi {
        let mean = cs.iter().map(|c| c.accuracy()).sum::<f64>() / cs.len() as f64;
        s.push_str(&format!(
            "{:<24} {:>42.1}%\n",
            "multi-turn (mean)",
            100.0 * mean
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, category: &str) -> Entry {
        Entry {
            id: id.into(),
            category: category.into(),
            question: vec![],
            functions: vec![],
            answers: vec![],
        }
    }

    #[test]
    fn selection_follows_the_split_and_the_limit_by_id_hash() {
        let entries: Vec<Entry> = (0..100)
            .map(|i| entry(&format!("multiple_{i}"), "multiple"))
            .collect();
        let held = select(entries.clone(), Which::Heldout, None);
        assert!(held.iter().all(|e| split_of(&e.id) == Split::Heldout));
        let train = select(entries.clone(), Which::Train, None);
        assert_eq!(held.len() + train.len(), 100);
        let some = select(entries.clone(), Which::All, Some(10));
        assert_eq!(some.len(), 10);
        // The smallest hashes, kept in BFCL's order.
        let mut hashes: Vec<u64> = entries.iter().map(|e| id_hash(&e.id)).collect();
        hashes.sort();
        assert!(some.iter().all(|e| id_hash(&e.id) <= hashes[9]));
        let ids: Vec<usize> = some
            .iter()
            .map(|e| e.id["multiple_".len()..].parse().unwrap())
            .collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        // Live categories are played whole whatever the split.
        let live: Vec<Entry> = (0..20)
            .map(|i| entry(&format!("live_simple_{i}"), "live_simple"))
            .collect();
        assert_eq!(select(live, Which::Train, None).len(), 20);
    }

    #[test]
    fn the_table_averages_as_the_leaderboard_does() {
        let c = |name: &str, tasks, correct| CategoryScore {
            category: name.into(),
            tasks,
            not_run: 0,
            correct,
            seconds: 0.0,
        };
        let mut scores = vec![
            c("simple_python", 10, 5),
            c("multiple", 10, 10),
            c("parallel", 10, 0),
        ];
        assert!(!table(&scores).contains("non-live"));
        scores.push(c("parallel_multiple", 20, 10));
        scores.extend([
            c("live_simple", 10, 10),
            c("live_multiple", 30, 0),
            c("live_parallel", 0, 0),
            c("live_parallel_multiple", 0, 0),
        ]);
        let t = table(&scores);
        // Non-live: (50 + 100 + 0 + 50) / 4; live: 10 of 40.
        assert!(t.contains("50.0%\n"), "{t}");
        let live = t.lines().find(|l| l.starts_with("live AST")).unwrap();
        assert!(live.ends_with("25.0%"), "{live}");
    }
}
