//! Stateful multi-turn tasks: conversations of several user turns whose tools keep a state per
//! episode. The tools are Python classes served by a worker process (`scripts/pytools.py
//! --class NAME`, or `--bfcl` for BFCL's multi-turn API classes), one instance of each involved
//! class per episode in a *session* ([`super::external`]): [`ToolSet::begin`] opens an
//! episode's session from its task's `initial_config`, its calls run there, and
//! [`ToolSet::end`] grades the episode and closes the session.
//!
//! Grading is BFCL's multi-turn state rule, replayed by the worker on fresh instances (`grade`):
//! after each user turn the public state of every instance equals the state reached by the
//! ground truth's calls, and the results of the ground truth's calls of that turn are among
//! those the assistant got. The episode is complete when every turn is right; the partial
//! credit is the share of turns right (`reward.w_turns`) and the call F1 per turn
//! (`reward.w_tool`).
//!
//! Tasks come from BFCL's multi-turn categories ([`StatefulSource::bfcl`]) or from a user's
//! JSON-lines file in the same form ([`StatefulSource::from_lines`]). Both are split by a hash
//! of each task's id ([`super::bfcl::split_of`]: 70/30, the same on every machine).
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::bfcl::multi::{class_functions, load_multi, MultiEntry, CLASS_DOCS};
use super::bfcl::source::tool_spec;
use super::bfcl::split_of;
use super::calls::call_of;
use super::external::ToolWorker;
use super::reward::{AnswerRule, Attempt, Call, Gold, RawCall};
use crate::env::{NoDemonstration, Protocol, Split, TaskSource, ToolSet, ToolSpec, UserTurn};
use crate::error::{Error, Result};

/// One task, ready to play.
#[derive(Debug)]
struct Prepared {
    entry: MultiEntry,
    /// The tools offered from the first turn (the involved classes' functions, less those
    /// excluded or held back).
    tools: Vec<ToolSpec>,
    /// Every tool the task may offer (to type a call's arguments).
    all_tools: Vec<ToolSpec>,
    later: Vec<UserTurn>,
    /// Per user turn, the ground truth's calls read to name and arguments.
    gold: Arc<Vec<Vec<RawCall>>>,
}

#[derive(Debug, Default)]
struct Tasks {
    train: Vec<Prepared>,
    heldout: Vec<Prepared>,
    by_id: HashMap<String, (Split, usize)>,
}

impl Tasks {
    fn split(&self, split: Split) -> &[Prepared] {
        match split {
            Split::Train => &self.train,
            Split::Heldout => &self.heldout,
        }
    }
}

/// How the source reaches its worker: the program, its answer timeout and its stderr log.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    pub command: Vec<String>,
    pub timeout: Duration,
    pub stderr_log: Option<PathBuf>,
}

impl WorkerSpec {
    fn start(&self) -> ToolWorker {
        ToolWorker::new(self.command.clone(), self.timeout, self.stderr_log.clone())
    }

    /// `scripts/pytools.py --bfcl` with the project's Python.
    pub fn bfcl(stderr_log: Option<PathBuf>) -> Self {
        let python = crate::formats::venv::python();
        let script = crate::formats::venv::script("pytools.py");
        WorkerSpec {
            command: vec![
                python.display().to_string(),
                script.display().to_string(),
                "--bfcl".into(),
            ],
            timeout: Duration::from_secs(60),
            stderr_log,
        }
    }
}

/// Stateful multi-turn tasks as a task source and their worker as the tool set. A clone shares
/// the tasks and starts a worker of its own (each actor owns its clone).
pub struct StatefulSource {
    tasks: Arc<Tasks>,
    /// Each class's tools.
    class_tools: Arc<BTreeMap<String, Vec<ToolSpec>>>,
    worker_spec: WorkerSpec,
    worker: Mutex<ToolWorker>,
    next_session: AtomicU64,
    seed: u64,
    name: String,
}

impl std::fmt::Debug for StatefulSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatefulSource")
            .field("name", &self.name)
            .field("train", &self.tasks.train.len())
            .field("heldout", &self.tasks.heldout.len())
            .finish()
    }
}

impl Clone for StatefulSource {
    fn clone(&self) -> Self {
        StatefulSource {
            tasks: self.tasks.clone(),
            class_tools: self.class_tools.clone(),
            worker_spec: self.worker_spec.clone(),
            worker: Mutex::new(self.worker_spec.start()),
            next_session: AtomicU64::new(0),
            seed: self.seed,
            name: self.name.clone(),
        }
    }
}

/// A task of a [`StatefulSource`]: its split and index there, and once its episode has begun,
/// the session that holds its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatefulRef {
    pub split: Split,
    pub index: usize,
    pub session: Option<u64>,
}

impl StatefulSource {
    /// BFCL's multi-turn `categories` from its data directory `dir`, served by
    /// `scripts/pytools.py --bfcl`.
    pub fn bfcl(
        dir: &Path,
        categories: &[String],
        seed: u64,
        stderr_log: Option<PathBuf>,
    ) -> Result<Self> {
        let mut entries = Vec::new();
        for c in categories {
            entries.extend(load_multi(dir, c)?);
        }
        let (train, heldout) = entries
            .into_iter()
            .partition(|e: &MultiEntry| split_of(&e.id) == Split::Train);
        Self::bfcl_tasks(dir, train, heldout, seed, stderr_log)
    }

    /// BFCL's multi-turn tasks given in their splits (in the order given), with the classes'
    /// documentation from `dir`.
    pub fn bfcl_tasks(
        dir: &Path,
        train: Vec<MultiEntry>,
        heldout: Vec<MultiEntry>,
        seed: u64,
        stderr_log: Option<PathBuf>,
    ) -> Result<Self> {
        let mut class_tools = BTreeMap::new();
        for (class, _) in CLASS_DOCS {
            let docs = class_functions(dir, class)?;
            class_tools.insert(class.to_string(), docs.iter().map(tool_spec).collect());
        }
        Self::new(
            train,
            heldout,
            class_tools,
            WorkerSpec::bfcl(stderr_log),
            seed,
            "bfcl_multi",
        )
    }

    /// A user's multi-turn tasks (`path`, [`super::bfcl::multi::load_lines`]) with the classes
    /// `worker` serves (their tools as the worker describes them).
    pub fn from_lines(path: &Path, worker: WorkerSpec, seed: u64) -> Result<Self> {
        let entries = super::bfcl::multi::load_lines(path)?;
        let mut w = worker.start();
        let served = w
            .request_batch(vec![json!({"classes": true})])
            .pop()
            .unwrap_or_else(|| Err("no answer".into()))
            .map_err(|e| {
                Error::input(format!(
                    "the tools' program {:?} did not list its classes: {e}",
                    worker.command.join(" ")
                ))
            })?;
        let served: BTreeMap<String, Vec<Value>> =
            serde_json::from_value(served.clone()).map_err(|_| {
                Error::input(format!(
                    "the tools' program answered {served:.80} when asked for its classes"
                ))
            })?;
        let class_tools = served
            .into_iter()
            .map(|(c, specs)| (c, specs.iter().map(tool_spec).collect()))
            .collect();
        let (train, heldout) = entries
            .into_iter()
            .partition(|e: &MultiEntry| split_of(&e.id) == Split::Train);
        Self::new(train, heldout, class_tools, worker, seed, "stateful")
    }

    /// The tasks of each split with the tools of each class; the ground truth's calls are read
    /// by the worker (positional arguments named by the methods' signatures).
    fn new(
        train: Vec<MultiEntry>,
        heldout: Vec<MultiEntry>,
        class_tools: BTreeMap<String, Vec<ToolSpec>>,
        worker_spec: WorkerSpec,
        seed: u64,
        name: &str,
    ) -> Result<Self> {
        let mut worker = worker_spec.start();
        let mut prepare = |entries: Vec<MultiEntry>| -> Result<Vec<Prepared>> {
            let texts: Vec<Value> = entries
                .iter()
                .flat_map(|e| e.ground_truth.iter().flatten())
                .map(|t| json!({ "parse": t }))
                .collect();
            let mut parsed = worker.request_batch(texts).into_iter();
            entries
                .into_iter()
                .map(|entry| {
                    let mut gold = Vec::new();
                    for turn in &entry.ground_truth {
                        let mut calls = Vec::new();
                        for text in turn {
                            let bad = |why: String| {
                                Error::input(format!(
                                    "task {:?}: the ground truth's call {text:?} {why}",
                                    entry.id
                                ))
                            };
                            let v = parsed
                                .next()
                                .unwrap_or_else(|| Err("no answer".into()))
                                .map_err(|e| bad(format!("does not read: {e}")))?;
                            match (v["name"].as_str(), v.get("arguments")) {
                                (Some(n), Some(a)) if a.is_object() => {
                                    calls.push((n.to_string(), a.clone()))
                                }
                                _ => return Err(bad(format!("reads as {v}"))),
                            }
                        }
                        gold.push(calls);
                    }
                    prepare_task(entry, &class_tools, gold)
                })
                .collect()
        };
        let mut tasks = Tasks {
            train: prepare(train)?,
            heldout: prepare(heldout)?,
            by_id: HashMap::new(),
        };
        tasks.by_id = [Split::Train, Split::Heldout]
            .into_iter()
            .flat_map(|split| {
                tasks
                    .split(split)
                    .iter()
                    .enumerate()
                    .map(move |(i, t)| (t.entry.id.clone(), (split, i)))
            })
            .collect();
        Ok(StatefulSource {
            tasks: Arc::new(tasks),
            class_tools: Arc::new(class_tools),
            worker: Mutex::new(worker),
            worker_spec,
            next_session: AtomicU64::new(0),
            seed,
            name: name.to_string(),
        })
    }

    /// The tasks of `split`, or of the other split when this one is empty.
    fn list(&self, split: Split) -> (Split, &[Prepared]) {
        let (t, h) = (&self.tasks.train, &self.tasks.heldout);
        match split {
            Split::Train if !t.is_empty() => (Split::Train, t),
            Split::Heldout if !h.is_empty() => (Split::Heldout, h),
            _ if t.is_empty() => (Split::Heldout, h),
            _ => (Split::Train, t),
        }
    }

    fn task(&self, item: &StatefulRef) -> &Prepared {
        let (_, list) = self.list(item.split);
        &list[item.index % list.len()]
    }

    /// The task `item` points at.
    pub fn entry(&self, item: &StatefulRef) -> &MultiEntry {
        &self.task(item).entry
    }

    /// Tasks in `split` (not falling back on the other split).
    pub fn len(&self, split: Split) -> usize {
        self.tasks.split(split).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len(Split::Train) + self.len(Split::Heldout) == 0
    }

    /// Sessions open in this source's worker (0 when it is not running).
    pub fn open_sessions(&self) -> std::result::Result<u64, String> {
        self.worker
            .lock()
            .map_err(|_| "the tools' worker is unusable".to_string())?
            .open_sessions()
    }

    /// Sessions its worker lost in restarts so far.
    pub fn sessions_lost(&self) -> u64 {
        self.worker.lock().map_or(0, |w| w.sessions_lost)
    }

    /// Kills the worker (a crash, in tests): its sessions are lost.
    pub fn kill_worker(&self) {
        if let Ok(mut w) = self.worker.lock() {
            w.kill();
        }
    }

    fn session_name(n: u64) -> String {
        format!("s{n}")
    }

    /// The source without the tasks that cannot be played within `max_tokens` (their
    /// demonstration, or their prompt when they have none, is longer), and how many were dropped
    /// per category.
    pub fn fitting<R: Protocol<StatefulSource>>(
        &self,
        protocol: &R,
        max_tokens: usize,
    ) -> Result<(StatefulSource, Vec<(String, usize)>)> {
        let mut dropped: Vec<(String, usize)> = Vec::new();
        let mut keep = |split: Split| -> Vec<MultiEntry> {
            (0..self.len(split))
                .filter_map(|index| {
                    let item = StatefulRef {
                        split,
                        index,
                        session: None,
                    };
                    let ok = match protocol.demonstration(self, &item) {
                        Ok(d) => d.tokens.len() <= max_tokens,
                        Err(NoDemonstration::TooLong) => false,
                        Err(_) => protocol.start(self, item).is_ok_and(|ep| {
                            crate::env::ProtocolEpisode::prompt_len(&ep) < max_tokens
                        }),
                    };
                    let entry = &self.task(&item).entry;
                    if !ok {
                        match dropped.iter_mut().find(|(c, _)| c == &entry.category) {
                            Some((_, n)) => *n += 1,
                            None => dropped.push((entry.category.clone(), 1)),
                        }
                    }
                    ok.then(|| entry.clone())
                })
                .collect()
        };
        let (train, heldout) = (keep(Split::Train), keep(Split::Heldout));
        let source = Self::new(
            train,
            heldout,
            (*self.class_tools).clone(),
            self.worker_spec.clone(),
            self.seed,
            &self.name,
        )?;
        Ok((source, dropped))
    }
}

/// A task with its tools and later turns laid out.
fn prepare_task(
    entry: MultiEntry,
    class_tools: &BTreeMap<String, Vec<ToolSpec>>,
    gold: Vec<Vec<RawCall>>,
) -> Result<Prepared> {
    let mut all_tools: Vec<ToolSpec> = Vec::new();
    for class in &entry.classes {
        let tools = class_tools.get(class).ok_or_else(|| {
            Error::input(format!(
                "task {:?}: class {class:?} is not served by the tools' program (served: {})",
                entry.id,
                class_tools.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })?;
        all_tools.extend(tools.iter().cloned());
    }
    all_tools.retain(|t| !entry.excluded.contains(&t.name));
    let held_back = |name: &str| {
        entry
            .missed
            .iter()
            .any(|(&turn, names)| turn > 0 && names.iter().any(|n| n == name))
    };
    let tools: Vec<ToolSpec> = all_tools
        .iter()
        .filter(|t| !held_back(&t.name))
        .cloned()
        .collect();
    let later = (1..entry.turns.len())
        .map(|t| UserTurn {
            messages: entry.turns[t].clone(),
            added_tools: entry
                .missed
                .get(&t)
                .map(|names| {
                    all_tools
                        .iter()
                        .filter(|s| names.contains(&s.name))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect();
    Ok(Prepared {
        entry,
        tools,
        all_tools,
        later,
        gold: Arc::new(gold),
    })
}

/// A call's arguments as JSON for its tool: each value as written, read as JSON where the
/// tool's schema wants something other than a string (numbers, booleans, arrays, objects).
fn typed_arguments(call: &Call, tools: &[ToolSpec]) -> Value {
    let schema = tools
        .iter()
        .find(|t| t.name == call.name)
        .map(|t| &t.parameters["properties"]);
    let mut args = Map::new();
    for name in call.arguments.keys() {
        let written = call.value(name).unwrap_or_default();
        let ty = schema.and_then(|p| p[name.as_str()]["type"].as_str());
        let v = match ty {
            Some("string") => Value::from(written),
            _ => serde_json::from_str(written).unwrap_or_else(|_| Value::from(written)),
        };
        args.insert(name.clone(), v);
    }
    Value::Object(args)
}

impl TaskSource for StatefulSource {
    type Item = StatefulRef;

    /// A training task drawn uniformly from the prompt's own stream.
    fn prompt_item(&self, id: &crate::ids::PromptId) -> StatefulRef {
        use rand::Rng;
        let (split, list) = self.list(Split::Train);
        StatefulRef {
            split,
            index: id.item_stream(self.seed).gen_range(0..list.len().max(1)),
            session: None,
        }
    }

    fn item(&self, split: Split, index: u64) -> StatefulRef {
        let (split, list) = self.list(split);
        StatefulRef {
            split,
            index: (index % list.len().max(1) as u64) as usize,
            session: None,
        }
    }

    /// The user's first message.
    fn prompt(&self, item: &StatefulRef) -> String {
        self.task(item).entry.turns[0]
            .iter()
            .rev()
            .find(|m| m["role"] == "user")
            .and_then(|m| m["content"].as_str())
            .unwrap_or_default()
            .to_string()
    }

    fn tools(&self, item: &StatefulRef) -> Vec<ToolSpec> {
        self.task(item).tools.clone()
    }

    fn gold(&self, item: &StatefulRef) -> Option<Gold> {
        let t = self.task(item);
        Some(Gold {
            calls: t
                .gold
                .iter()
                .flatten()
                .map(|(n, a)| call_of(n, a))
                .collect(),
            rule: AnswerRule::Turns(t.gold.clone()),
            answer: String::new(),
            needed: Vec::new(),
        })
    }

    fn name(&self) -> String {
        self.name.clone()
    }

    fn split_len(&self, split: Split) -> Option<usize> {
        Some(self.list(split).1.len())
    }

    fn locate(
        &self,
        id: Option<&Value>,
        _prompt: &str,
    ) -> std::result::Result<StatefulRef, String> {
        let id = id
            .and_then(Value::as_str)
            .ok_or("a multi-turn line needs its task's string \"id\"")?;
        let &(split, index) = self
            .tasks
            .by_id
            .get(id)
            .ok_or_else(|| format!("no multi-turn task {id:?} among those loaded"))?;
        Ok(StatefulRef {
            split,
            index,
            session: None,
        })
    }

    fn messages(&self, item: &StatefulRef) -> Option<Vec<Value>> {
        Some(self.task(item).entry.turns[0].clone())
    }

    fn item_id(&self, item: &StatefulRef) -> Option<String> {
        Some(self.task(item).entry.id.clone())
    }

    fn later_turns(&self, item: &StatefulRef) -> Vec<UserTurn> {
        self.task(item).later.clone()
    }
}

impl ToolSet<StatefulRef> for StatefulSource {
    fn execute(&self, item: &StatefulRef, call: &Call) -> std::result::Result<String, String> {
        self.execute_batch(&[(item, call)])
            .pop()
            .unwrap_or_else(|| Err("no result".into()))
    }

    /// Every call in its episode's session, in one exchange with the worker.
    fn execute_batch(
        &self,
        calls: &[(&StatefulRef, &Call)],
    ) -> Vec<std::result::Result<String, String>> {
        let mut out: Vec<Option<std::result::Result<String, String>>> = vec![None; calls.len()];
        let mut sent = Vec::new();
        let mut requests = Vec::new();
        for (i, (item, call)) in calls.iter().enumerate() {
            let Some(session) = item.session else {
                out[i] = Some(Err(
                    "the episode has no session (its tools keep state)".into()
                ));
                continue;
            };
            let args = typed_arguments(call, &self.task(item).all_tools);
            requests.push((Self::session_name(session), call.name.clone(), args));
            sent.push(i);
        }
        if !requests.is_empty() {
            let batch: Vec<(&str, &str, &Value)> = requests
                .iter()
                .map(|(s, n, a)| (s.as_str(), n.as_str(), a))
                .collect();
            let results = match self.worker.lock() {
                Ok(mut w) => w.session_calls(&batch),
                Err(_) => vec![Err("the tools' worker is unusable".to_string()); batch.len()],
            };
            for (i, r) in sent.into_iter().zip(results) {
                out[i] = Some(r);
            }
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err("no result".into())))
            .collect()
    }

    /// A session per episode, opened from its task's `initial_config`.
    fn begin(&self, items: Vec<StatefulRef>) -> Vec<StatefulRef> {
        let items: Vec<StatefulRef> = items
            .into_iter()
            .map(|mut it| {
                it.session = Some(self.next_session.fetch_add(1, Ordering::Relaxed));
                it
            })
            .collect();
        let opens: Vec<(String, Value, bool)> = items
            .iter()
            .map(|it| {
                let e = &self.task(it).entry;
                (
                    Self::session_name(it.session.unwrap_or_default()),
                    e.session_config(),
                    e.long_context(),
                )
            })
            .collect();
        if let Ok(mut w) = self.worker.lock() {
            // A session that fails to open leaves its episode's calls to fail, one by one.
            let _ = w.open_batch(&opens);
        }
        items
    }

    /// Grades the finished episodes by the state rule, then closes every session.
    fn end(&self, ended: Vec<(&StatefulRef, Option<&mut Attempt>)>) {
        let Ok(mut w) = self.worker.lock() else {
            return;
        };
        let mut graded: Vec<(usize, Value)> = Vec::new();
        for (i, (item, attempt)) in ended.iter().enumerate() {
            if let Some(a) = attempt {
                let e = &self.task(item).entry;
                let model: Vec<Vec<Value>> = a
                    .calls_by_turn(e.turns.len())
                    .into_iter()
                    .map(|turn| {
                        turn.into_iter()
                            .map(|(name, args)| json!({"name": name, "arguments": args}))
                            .collect()
                    })
                    .collect();
                graded.push((i, e.grade_request(&json!(model))));
            }
        }
        let specs: Vec<Value> = graded.iter().map(|(_, s)| s.clone()).collect();
        let verdicts = w.grade_batch(&specs);
        let sessions: Vec<String> = ended
            .iter()
            .filter_map(|(it, _)| it.session.map(Self::session_name))
            .collect();
        let mut ended = ended;
        for ((i, _), v) in graded.into_iter().zip(verdicts) {
            if let Some(a) = ended[i].1.as_deref_mut() {
                a.graded = v.ok();
            }
        }
        let _ = w.close_batch(&sessions);
    }
}
