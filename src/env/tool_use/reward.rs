//! Verifiable rewards for tool use (SPEC §3.3): pure functions of what an episode did and what
//! the task needed. No tch, no threads, so any model's episodes can be scored the same way.
//!
//! ```text
//! r = w_task · completion + w_tool · tool_precision − w_format · format_errors − w_cost · calls
//!     + w_names · names + w_params · params + w_values · values      (calls rule only)
//!     + w_turns · share of user turns right                          (state rule only)
//! ```
//!
//! Under the state rule ([`AnswerRule::Turns`]: multi-turn tasks with stateful tools) completion
//! is the verdict of the tools that held the episode's state ([`Attempt::graded`]), and the
//! tool F1 is taken per user turn against that turn's ground truth, then averaged.
//!
//! Under the calls rule ([`AnswerRule::Calls`]: BFCL's tasks, datasets' tasks with their own
//! tools) completion is BFCL's verdict on the calls as written, and `names`, `params`, `values`
//! are ToolRL's partial credit ([`CallsRule::partial`]).
//!
//! `tool_precision` is an F1: a made call matches a gold call when the tool name, the argument
//! names and the argument values are all equal; calls match in any order and each gold call is
//! matched at most once (ToolRL, BFCL's AST check). With `tool_match = "execution"` a call counts
//! when its result is a value the task still needs, each needed value credited once (FTRL-style).
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::env::tool_use::bfcl::check::CallsRule;

/// One tool call: a name and named arguments. Calls compare by name and the values' canonical
/// text ([`canonical_value`]); a tool receives the values as they were written.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Call {
    pub name: String,
    /// The values in canonical text form.
    pub arguments: BTreeMap<String, String>,
    /// The values as written (trimmed), which a tool receives: `Paris`, not `paris`.
    #[serde(skip)]
    pub written: BTreeMap<String, String>,
}

/// `name(a=1, b=2)`: how errors name a call.
impl std::fmt::Display for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let args: Vec<String> = self
            .arguments
            .keys()
            .map(|k| format!("{k}={}", self.value(k).unwrap_or_default()))
            .collect();
        write!(f, "{}({})", self.name, args.join(", "))
    }
}

impl Call {
    pub fn new(name: &str, args: &[(&str, &str)]) -> Self {
        Call {
            name: name.to_string(),
            arguments: args
                .iter()
                .map(|(k, v)| (k.to_string(), canonical_value(v)))
                .collect(),
            written: args
                .iter()
                .map(|(k, v)| (k.to_string(), v.trim().to_string()))
                .collect(),
        }
    }

    /// A call of `name` with arguments `args` compared in canonical text: a string as it is, a
    /// number or boolean as written, an array or object as its compact JSON.
    pub fn from_json(name: &str, args: &serde_json::Value) -> Call {
        let empty = serde_json::Map::new();
        let texts: Vec<(&String, String)> = args
            .as_object()
            .unwrap_or(&empty)
            .iter()
            .map(|(k, v)| {
                let text = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k, text)
            })
            .collect();
        let pairs: Vec<(&str, &str)> = texts
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        Call::new(name, &pairs)
    }

    /// The value of argument `name` as written (its canonical text when that is all there is).
    pub fn value(&self, name: &str) -> Option<&str> {
        self.written
            .get(name)
            .or_else(|| self.arguments.get(name))
            .map(String::as_str)
    }

    fn key(&self) -> (&String, &BTreeMap<String, String>) {
        (&self.name, &self.arguments)
    }
}

impl PartialEq for Call {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Call {}

impl PartialOrd for Call {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Call {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

/// The canonical text of a value: integers without leading zeros or `+`, `12.0` → `12`, other
/// text trimmed and lower-cased.
pub fn canonical_value(v: &str) -> String {
    let t = v.trim();
    if let Ok(i) = t.parse::<i64>() {
        return i.to_string();
    }
    if let Ok(f) = t.parse::<f64>() {
        if f.is_finite() && f.fract() == 0.0 && f.abs() < 9e15 {
            return (f as i64).to_string();
        }
        return f.to_string();
    }
    t.to_lowercase()
}

/// How an answer is compared with the gold answer.
#[derive(Debug, Clone, Default)]
pub enum AnswerRule {
    /// Equal as [`canonical_value`]s: trimmed, case-insensitive, `12.0` = `12`.
    #[default]
    Exact,
    /// Both read as numbers (`,` thousands separators dropped), within `tolerance`.
    Number { tolerance: f64 },
    /// The pattern matches the whole (trimmed) answer.
    Regex(regex::Regex),
    /// Equal (as `Exact`) to the gold answer or to one of these.
    OneOf(Vec<String>),
    /// No answer is compared: the calls are, under BFCL's AST semantics (the episode is
    /// complete when the checker says right), and earn ToolRL's partial credit.
    Calls(std::sync::Arc<CallsRule>),
    /// A multi-turn conversation with stateful tools, under BFCL's state rule: the episode is
    /// complete when every user turn is right ([`Attempt::graded`], filled in by the tools that
    /// held its state). Holds, per user turn, the ground truth's calls as written (for call F1
    /// per turn and the demonstrations).
    Turns(std::sync::Arc<Vec<Vec<RawCall>>>),
}

impl PartialEq for AnswerRule {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (AnswerRule::Exact, AnswerRule::Exact) => true,
            (AnswerRule::Number { tolerance: a }, AnswerRule::Number { tolerance: b }) => a == b,
            (AnswerRule::Regex(a), AnswerRule::Regex(b)) => a.as_str() == b.as_str(),
            (AnswerRule::OneOf(a), AnswerRule::OneOf(b)) => a == b,
            (AnswerRule::Calls(a), AnswerRule::Calls(b)) => a == b,
            (AnswerRule::Turns(a), AnswerRule::Turns(b)) => a == b,
            _ => false,
        }
    }
}

/// A number as people write it: `-1,234.5` → -1234.5.
pub fn read_number(s: &str) -> Option<f64> {
    let t: String = s.trim().chars().filter(|&c| c != ',').collect();
    t.parse::<f64>().ok().filter(|v| v.is_finite())
}

impl AnswerRule {
    /// Whether `answer` counts as the gold answer `gold`.
    pub fn accepts(&self, gold: &str, answer: &str) -> bool {
        let answer = answer.trim();
        match self {
            AnswerRule::Exact => canonical_value(answer) == canonical_value(gold),
            AnswerRule::Number { tolerance } => match (read_number(gold), read_number(answer)) {
                (Some(g), Some(a)) => (g - a).abs() <= *tolerance,
                _ => false,
            },
            AnswerRule::Regex(re) => re
                .find(answer)
                .is_some_and(|m| m.start() == 0 && m.end() == answer.len()),
            AnswerRule::OneOf(accept) => {
                let a = canonical_value(answer);
                a == canonical_value(gold) || accept.iter().any(|x| canonical_value(x) == a)
            }
            AnswerRule::Calls(_) | AnswerRule::Turns(_) => false,
        }
    }
}

/// A call as written: the function's name and its arguments object, values of any JSON type.
pub type RawCall = (String, serde_json::Value);

/// What an episode did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Attempt {
    pub calls: Vec<Call>,
    /// The result each call returned (`None` for an error), aligned with `calls`.
    pub results: Vec<Option<String>>,
    /// The final answer, if the episode gave one.
    pub answer: Option<String>,
    /// Malformed calls, a missing answer, truncation, stray tokens.
    pub format_errors: u32,
    /// Every call as written (name, arguments object with its JSON values), in order: what a
    /// calls rule grades ([`AnswerRule::Calls`]).
    pub raw_calls: Vec<RawCall>,
    /// Multi-turn episodes: how many of `raw_calls` had been made when each user turn ended
    /// (one entry per finished user turn).
    pub turn_ends: Vec<usize>,
    /// Multi-turn episodes under the state rule: the verdict of the tools that held the
    /// episode's state (`None`: not graded, which scores as wrong).
    pub graded: Option<Graded>,
}

impl Attempt {
    /// The calls as written, split by user turn: `turns` lists (the calls after the last
    /// finished turn belong to the turn in progress; turns never reached are empty).
    pub fn calls_by_turn(&self, turns: usize) -> Vec<Vec<RawCall>> {
        let mut out = Vec::with_capacity(turns);
        let mut start = 0;
        for &end in &self.turn_ends {
            let end = end.min(self.raw_calls.len());
            out.push(self.raw_calls[start.min(end)..end].to_vec());
            start = end;
        }
        if start < self.raw_calls.len() {
            out.push(self.raw_calls[start..].to_vec());
        }
        out.resize(turns.max(out.len()), Vec::new());
        out
    }
}

/// A conversation's verdict under BFCL's multi-turn state rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Graded {
    /// Every turn right.
    pub valid: bool,
    /// Per user turn: its state and its results as the ground truth's.
    pub turns: Vec<bool>,
    /// BFCL's reason for the first wrong turn (`multi_turn:instance_state_mismatch`, …).
    pub reason: Option<String>,
}

/// What the task needed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Gold {
    pub calls: Vec<Call>,
    /// How the answer is compared (the built-in tasks: `Exact`).
    pub rule: AnswerRule,
    pub answer: String,
    /// Intermediate values the task needs (execution-based credit).
    pub needed: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolMatch {
    /// Name, argument names and values must match a gold call.
    Exact,
    /// A call counts when its result is a value the task still needs.
    Execution,
}

/// The reward's weights and options (`[reward]` in the config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RewardConfig {
    /// Weight of completion (exact match of the final answer).
    pub w_task: f64,
    /// Weight of the tool-call F1.
    pub w_tool: f64,
    /// Penalty per format error.
    pub w_format: f64,
    /// Cost per call made.
    pub w_cost: f64,
    /// Map completion to ±1 instead of {0, 1}, as in the paper.
    pub completion_pm1: bool,
    /// `exact` or `execution`.
    pub tool_match: ToolMatch,
    /// Calls rule only (BFCL): weight of ToolRL's function-name credit.
    pub w_names: f64,
    /// Calls rule only: weight of the parameter-name credit.
    pub w_params: f64,
    /// Calls rule only: weight of the parameter-value credit.
    pub w_values: f64,
    /// Multi-turn state rule only: weight of the share of user turns right.
    pub w_turns: f64,
}

impl Default for RewardConfig {
    fn default() -> Self {
        RewardConfig {
            w_task: 1.0,
            w_tool: 0.5,
            w_format: 0.1,
            w_cost: 0.0,
            completion_pm1: false,
            tool_match: ToolMatch::Exact,
            w_names: 0.0,
            w_params: 0.0,
            w_values: 0.0,
            w_turns: 0.0,
        }
    }
}

/// The reward and its parts.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Score {
    pub reward: f64,
    /// 1 when the answer matches exactly, else 0.
    pub completion: f64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub format_errors: u32,
    pub calls: usize,
}

/// Means of [`Score`]s over episodes, with the episodes' generated length: one type for a learner
/// batch, an evaluation and a scored file. Add with [`ScoreMeans::add`], then call
/// [`ScoreMeans::finish`] once.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct ScoreMeans {
    pub episodes: usize,
    pub reward: f64,
    pub completion: f64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub format_errors: f64,
    pub calls: f64,
    /// Generated tokens per episode (tool results included; 0 when unknown).
    pub length: f64,
}

impl ScoreMeans {
    pub fn add(&mut self, s: &Score, length: usize) {
        self.episodes += 1;
        self.reward += s.reward;
        self.completion += s.completion;
        self.precision += s.precision;
        self.recall += s.recall;
        self.f1 += s.f1;
        self.format_errors += s.format_errors as f64;
        self.calls += s.calls as f64;
        self.length += length as f64;
    }

    /// Turns the sums into means.
    pub fn finish(mut self) -> Self {
        let n = self.episodes.max(1) as f64;
        for x in [
            &mut self.reward,
            &mut self.completion,
            &mut self.precision,
            &mut self.recall,
            &mut self.f1,
            &mut self.format_errors,
            &mut self.calls,
            &mut self.length,
        ] {
            *x /= n;
        }
        self
    }
}

/// Precision, recall and F1 from a true-positive count. Nothing made and nothing needed is a
/// perfect score; one side empty and the other not scores 0.
fn prf(tp: usize, made: usize, wanted: usize) -> (f64, f64, f64) {
    if made == 0 && wanted == 0 {
        return (1.0, 1.0, 1.0);
    }
    let p = if made == 0 {
        0.0
    } else {
        tp as f64 / made as f64
    };
    let r = if wanted == 0 {
        0.0
    } else {
        tp as f64 / wanted as f64
    };
    let f1 = if p + r == 0.0 {
        0.0
    } else {
        2.0 * p * r / (p + r)
    };
    (p, r, f1)
}

/// Multiset intersection size: each gold item matched at most once, in any order.
fn matched<T: PartialEq>(made: impl IntoIterator<Item = T>, gold: &[T]) -> usize {
    let mut used = vec![false; gold.len()];
    let mut tp = 0;
    for m in made {
        if let Some(i) = (0..gold.len()).find(|&i| !used[i] && gold[i] == m) {
            used[i] = true;
            tp += 1;
        }
    }
    tp
}

/// Precision, recall, F1 of `made` against `gold` calls.
pub fn call_f1(made: &[Call], gold: &[Call]) -> (f64, f64, f64) {
    prf(
        matched(made.iter(), &gold.iter().collect::<Vec<_>>()),
        made.len(),
        gold.len(),
    )
}

/// Precision, recall, F1 of the calls' results against the values the task needs.
pub fn execution_f1(results: &[Option<String>], needed: &[String]) -> (f64, f64, f64) {
    let got = results.iter().flatten().map(|r| canonical_value(r));
    let needed: Vec<String> = needed.iter().map(|v| canonical_value(v)).collect();
    prf(matched(got, &needed), results.len(), needed.len())
}

/// Scores an attempt against the gold.
pub fn score(cfg: &RewardConfig, attempt: &Attempt, gold: &Gold) -> Score {
    let completion = match (&gold.rule, &attempt.answer) {
        (AnswerRule::Calls(rule), _) => calls_completion(rule, attempt),
        (AnswerRule::Turns(_), _) => {
            attempt
                .graded
                .as_ref()
                .map_or(0.0, |g| if g.valid { 1.0 } else { 0.0 })
        }
        (rule, Some(a)) if rule.accepts(&gold.answer, a) => 1.0,
        _ => 0.0,
    };
    let (precision, recall, f1) = match (&gold.rule, cfg.tool_match) {
        (AnswerRule::Turns(turns), _) => turn_f1(attempt, turns),
        (_, ToolMatch::Exact) => call_f1(&attempt.calls, &gold.calls),
        (_, ToolMatch::Execution) => execution_f1(&attempt.results, &gold.needed),
    };
    let task = if cfg.completion_pm1 {
        2.0 * completion - 1.0
    } else {
        completion
    };
    let partial = match &gold.rule {
        AnswerRule::Calls(rule) => {
            let p = rule.partial(&attempt.raw_calls);
            cfg.w_names * p.names + cfg.w_params * p.params + cfg.w_values * p.values
        }
        AnswerRule::Turns(turns) => {
            let right = attempt
                .graded
                .as_ref()
                .map_or(0, |g| g.turns.iter().filter(|&&t| t).count());
            cfg.w_turns * right as f64 / turns.len().max(1) as f64
        }
        _ => 0.0,
    };
    let reward = cfg.w_task * task + cfg.w_tool * f1 + partial
        - cfg.w_format * attempt.format_errors as f64
        - cfg.w_cost * attempt.calls.len() as f64;
    Score {
        reward,
        completion,
        precision,
        recall,
        f1,
        format_errors: attempt.format_errors,
        calls: attempt.calls.len(),
    }
}

/// Precision, recall and F1 of the calls per user turn against that turn's ground truth
/// (compared as [`Call`]s), averaged over the turns.
fn turn_f1(attempt: &Attempt, gold: &[Vec<RawCall>]) -> (f64, f64, f64) {
    let made = attempt.calls_by_turn(gold.len());
    let calls =
        |raw: &[RawCall]| -> Vec<Call> { raw.iter().map(|(n, a)| Call::from_json(n, a)).collect() };
    let mut sums = (0.0, 0.0, 0.0);
    for (mine, want) in made.iter().zip(gold) {
        let (p, r, f) = call_f1(&calls(mine), &calls(want));
        sums = (sums.0 + p, sums.1 + r, sums.2 + f);
    }
    let n = gold.len().max(1) as f64;
    (sums.0 / n, sums.1 / n, sums.2 / n)
}

/// Completion under a calls rule, as BFCL grades an output: with no expected call, right when
/// no call was read (text, or output that does not decode, is no call); otherwise right when
/// every `<tool_call>` block read as a call (a block that does not is output BFCL cannot decode,
/// and a truncated episode one it never finished) and the checker accepts the calls.
fn calls_completion(rule: &CallsRule, attempt: &Attempt) -> f64 {
    let right = if rule.answers.is_empty() {
        attempt.raw_calls.is_empty()
    } else {
        attempt.format_errors == 0 && rule.verdict(&attempt.raw_calls).is_ok()
    };
    if right {
        1.0
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gold_two() -> Gold {
        Gold {
            calls: vec![
                Call::new("get", &[("ent", "e1"), ("attr", "age")]),
                Call::new("get", &[("ent", "e2"), ("attr", "age")]),
            ],
            rule: AnswerRule::Exact,
            answer: "70".into(),
            needed: vec!["30".into(), "40".into()],
        }
    }

    fn attempt(calls: Vec<Call>, answer: Option<&str>) -> Attempt {
        let results = calls.iter().map(|_| Some("0".to_string())).collect();
        Attempt {
            calls,
            results,
            answer: answer.map(String::from),
            ..Attempt::default()
        }
    }

    fn exact() -> RewardConfig {
        RewardConfig::default()
    }

    #[test]
    fn no_calls_when_calls_were_needed() {
        let s = score(&exact(), &attempt(vec![], Some("70")), &gold_two());
        assert_eq!(
            (s.precision, s.recall, s.f1, s.completion),
            (0.0, 0.0, 0.0, 1.0)
        );
        assert_eq!(s.reward, 1.0);
    }

    #[test]
    fn calls_in_another_order_match() {
        let g = gold_two();
        let made = vec![g.calls[1].clone(), g.calls[0].clone()];
        let s = score(&exact(), &attempt(made, Some("70")), &g);
        assert_eq!((s.precision, s.recall, s.f1), (1.0, 1.0, 1.0));
        assert_eq!(s.reward, 1.5);
    }

    #[test]
    fn a_duplicate_call_matches_one_gold_call_once() {
        let g = gold_two();
        let made = vec![g.calls[0].clone(), g.calls[0].clone()];
        let s = score(&exact(), &attempt(made, None), &g);
        assert_eq!((s.precision, s.recall), (0.5, 0.5));
        assert_eq!(s.f1, 0.5);
        assert_eq!(s.completion, 0.0);
    }

    #[test]
    fn a_wrong_argument_value_or_name_does_not_match() {
        let g = gold_two();
        let wrong_value = Call::new("get", &[("ent", "e1"), ("attr", "height")]);
        let wrong_name = Call::new("get", &[("entity", "e2"), ("attr", "age")]);
        let s = score(
            &exact(),
            &attempt(vec![wrong_value, wrong_name], Some("71")),
            &g,
        );
        assert_eq!((s.precision, s.recall, s.f1), (0.0, 0.0, 0.0));
        assert_eq!(s.reward, 0.0);
    }

    #[test]
    fn extra_calls_lower_precision_not_recall() {
        let g = gold_two();
        let mut made = g.calls.clone();
        made.push(Call::new("get", &[("ent", "e3"), ("attr", "age")]));
        made.push(Call::new("add", &[("a", "1"), ("b", "2")]));
        let s = score(&exact(), &attempt(made, Some("70")), &g);
        assert_eq!((s.precision, s.recall), (0.5, 1.0));
        assert!((s.f1 - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn a_correct_answer_without_calls_when_none_are_needed_is_perfect() {
        let g = Gold {
            calls: vec![],
            rule: AnswerRule::Exact,
            answer: "5".into(),
            needed: vec![],
        };
        let s = score(&exact(), &attempt(vec![], Some("005")), &g);
        assert_eq!((s.completion, s.f1, s.reward), (1.0, 1.0, 1.5));
        // A call where none is needed is a false positive.
        let s = score(
            &exact(),
            &attempt(vec![Call::new("add", &[("a", "2"), ("b", "3")])], Some("5")),
            &g,
        );
        assert_eq!(s.f1, 0.0);
    }

    #[test]
    fn weights_penalties_and_pm1() {
        let cfg = RewardConfig {
            w_format: 0.25,
            w_cost: 0.1,
            completion_pm1: true,
            ..exact()
        };
        let g = gold_two();
        let mut a = attempt(g.calls.clone(), Some("69"));
        a.format_errors = 2;
        let s = score(&cfg, &a, &g);
        // −1 (wrong answer, ±1) + 0.5·1 − 0.25·2 − 0.1·2
        assert!(
            (s.reward - (-1.0 + 0.5 - 0.5 - 0.2)).abs() < 1e-12,
            "{}",
            s.reward
        );
    }

    #[test]
    fn execution_credit_counts_needed_results_once() {
        let cfg = RewardConfig {
            tool_match: ToolMatch::Execution,
            ..exact()
        };
        let g = gold_two();
        // Different calls that still fetched the needed values, plus a duplicate and an error.
        let a = Attempt {
            calls: vec![Call::new("x", &[]); 4],
            results: vec![
                Some("40".into()),
                Some("30.0".into()),
                Some("30".into()),
                None,
            ],
            answer: Some("70".into()),
            format_errors: 1,
            ..Attempt::default()
        };
        let s = score(&cfg, &a, &g);
        assert_eq!((s.precision, s.recall), (0.5, 1.0));
    }

    #[test]
    fn values_are_canonical() {
        assert_eq!(canonical_value(" 007 "), "7");
        assert_eq!(canonical_value("12.0"), "12");
        assert_eq!(canonical_value("-3"), "-3");
        assert_eq!(canonical_value("E17"), "e17");
        assert_eq!(
            Call::new("add", &[("a", "01")]),
            Call::new("add", &[("a", "1")])
        );
    }
}
