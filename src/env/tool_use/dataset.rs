//! Users' own tasks (SPEC §3.4): a JSON-lines file, one task per line.
//!
//! ```text
//! {"id": "geo-1", "split": "train", "prompt": "How far is Paris from Lyon, in km?",
//!  "tools": ["distance"], "answer": "392", "rule": "number", "tolerance": 5,
//!  "calls": [{"name": "distance", "arguments": {"from": "Paris", "to": "Lyon"}}]}
//! ```
//!
//! - `id` (string or number, unique) and `split` (`train` or `heldout`);
//! - the prompt: `prompt` (the user's text) or `messages` (OpenAI-style, with at least one user
//!   message; a system message is kept);
//! - `tools`: names of the config's tools this task may use (may be empty);
//! - `answer` (string or number) and its `rule` ([`AnswerRule`]): `exact` (the default: equal as
//!   the built-in tasks compare, trimmed, case-insensitive, `12.0` = `12`), `number` (within
//!   `tolerance`, 0 by default; `1,234` reads as 1234), `regex` (`pattern` must match the whole
//!   answer) or `one_of` (`accept`: the answers taken besides `answer`);
//! - `calls` (optional): the gold calls, for tool precision and recall; each must use one of the
//!   task's tools.
//!
//! A task may instead bring its own tools, call-only (graded, not run): `tools` is then a list
//! of OpenAI tool schemas (`{"type": "function", "function": {"name", "description",
//! "parameters"}}`), the episode ends with the assistant's turn, and the calls it writes are
//! graded by BFCL's AST rules against either `calls` (the exact gold calls, in any order; no
//! call: none is right) or `ground_truth` (BFCL's form: `[{name: {param: [acceptable values]}}]`,
//! `""` among them where the parameter may be left out). Such a task has no `answer` or `rule`.
//!
//! ```text
//! {"id": "w-1", "split": "train", "prompt": "Weather in Paris for 3 days?",
//!  "tools": [{"type": "function", "function": {"name": "forecast", "description": "…",
//!    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
//!    "days": {"type": "integer"}}, "required": ["city", "days"]}}}],
//!  "calls": [{"name": "forecast", "arguments": {"city": "Paris", "days": 3}}]}
//! ```
//!
//! Loading checks every line and reports every bad one as `FILE:LINE: reason` (nothing starts
//! with a bad file). The loaded set is shared, not copied, by the actors that use it.
use std::collections::HashMap;
use std::path::Path;

use rayon::prelude::*;
use serde_json::{Map, Value};

use super::bfcl::check::CallsRule;
use super::calls::parse_call_json;
use super::reward::{read_number, AnswerRule, Call};
use crate::env::Split;
use crate::error::{Error, Result};
use crate::formats::lines::{capped_lines, Line};

/// The prompt of a dataset task.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// The user's message.
    Text(String),
    /// OpenAI-style messages (system and user, in order).
    Messages(Vec<Value>),
}

impl Prompt {
    /// The text of the last user message (the question).
    pub fn question(&self) -> &str {
        match self {
            Prompt::Text(t) => t,
            Prompt::Messages(m) => m
                .iter()
                .rev()
                .find(|m| m["role"] == "user")
                .and_then(|m| m["content"].as_str())
                .unwrap_or(""),
        }
    }
}

/// One task of a dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetTask {
    pub id: String,
    pub split: Split,
    pub prompt: Prompt,
    /// Names of the tools offered.
    pub tools: Vec<String>,
    pub answer: String,
    pub rule: AnswerRule,
    /// Gold calls, when given.
    pub calls: Option<Vec<Call>>,
    /// The line it came from (1-based).
    pub line: usize,
    /// The task's own tools (call-only; its `rule` grades the calls), when it brings them.
    pub inline: Option<std::sync::Arc<[crate::env::ToolSpec]>>,
}

/// A loaded dataset: its tasks by split, and an index by id.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub train: Vec<DatasetTask>,
    pub heldout: Vec<DatasetTask>,
    by_id: HashMap<String, (Split, usize)>,
}

/// Most bad lines named in one error.
const MAX_REPORTED: usize = 20;

/// The longest line a dataset may have (a task with its messages and tool schemas is a few
/// kilobytes; a longer line is refused without being held in memory).
const MAX_LINE: usize = 16 << 20;

const KEYS: [&str; 12] = [
    "id",
    "split",
    "prompt",
    "messages",
    "tools",
    "answer",
    "rule",
    "tolerance",
    "pattern",
    "accept",
    "calls",
    "ground_truth",
];

impl Dataset {
    /// Reads `path`; `tools` are the names of the tools the config defines.
    pub fn load(path: &Path, tools: &[&str]) -> Result<Dataset> {
        let cant = |e: std::io::Error| Error::input(format!("cannot read {}: {e}", path.display()));
        let file = std::fs::File::open(path).map_err(cant)?;
        let lines = capped_lines(std::io::BufReader::new(file), MAX_LINE)
            .collect::<std::io::Result<Vec<Line>>>()
            .map_err(cant)?;
        Self::from_lines(lines, &path.display().to_string(), tools)
    }

    /// Parses the text of a dataset file named `file` (for its messages).
    pub fn parse(text: &str, file: &str, tools: &[&str]) -> Result<Dataset> {
        let lines = capped_lines(text.as_bytes(), MAX_LINE)
            .collect::<std::io::Result<Vec<Line>>>()
            .map_err(|e| Error::input(format!("{file}: {e}")))?;
        Self::from_lines(lines, file, tools)
    }

    /// The dataset of the numbered `lines` of `file`: every line parsed and checked (in
    /// parallel, kept in order), then ids checked for uniqueness in line order.
    fn from_lines(lines: Vec<Line>, file: &str, tools: &[&str]) -> Result<Dataset> {
        let parsed: Vec<(usize, std::result::Result<DatasetTask, String>)> = lines
            .into_par_iter()
            .filter(|(_, text)| text.as_ref().map_or(true, |t| !t.trim().is_empty()))
            .map(|(n, text)| (n, text.and_then(|t| parse_task(&t, n, tools))))
            .collect();
        let mut train = Vec::new();
        let mut heldout = Vec::new();
        let mut by_id: HashMap<String, (Split, usize)> = HashMap::new();
        let mut first_line: HashMap<String, usize> = HashMap::new();
        let mut bad = Vec::new();
        for (n, task) in parsed {
            let task = task.and_then(|t| match first_line.get(&t.id) {
                Some(first) => Err(format!("id {:?} is already used on line {first}", t.id)),
                None => Ok(t),
            });
            match task {
                Ok(t) => {
                    first_line.insert(t.id.clone(), n);
                    let list = match t.split {
                        Split::Train => &mut train,
                        Split::Heldout => &mut heldout,
                    };
                    by_id.insert(t.id.clone(), (t.split, list.len()));
                    list.push(t);
                }
                Err(reason) => bad.push(format!("{file}:{n}: {reason}")),
            }
        }
        if !bad.is_empty() {
            let more = bad.len().saturating_sub(MAX_REPORTED);
            let mut msg = bad
                .iter()
                .take(MAX_REPORTED)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n");
            if more > 0 {
                msg.push_str(&format!("\n… and {more} more bad lines in {file}"));
            }
            return Err(Error::input(msg));
        }
        if train.is_empty() {
            return Err(Error::input(format!(
                "{file}: no task with split \"train\""
            )));
        }
        Ok(Dataset {
            train,
            heldout,
            by_id,
        })
    }

    /// The tasks of `split`.
    pub fn split(&self, split: Split) -> &[DatasetTask] {
        match split {
            Split::Train => &self.train,
            Split::Heldout => &self.heldout,
        }
    }

    /// Where the task with this id is: its split and index there.
    pub fn position(&self, id: &str) -> Option<(Split, usize)> {
        self.by_id.get(id).copied()
    }

    /// The task with this id.
    pub fn get(&self, id: &str) -> Option<&DatasetTask> {
        let &(split, i) = self.by_id.get(id)?;
        self.split(split).get(i)
    }

    /// Tasks in all.
    pub fn len(&self) -> usize {
        self.train.len() + self.heldout.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn text_of(v: &Value, key: &str) -> std::result::Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        _ => Err(format!("\"{key}\" must be a string or a number")),
    }
}

fn strings(v: &Value, key: &str) -> std::result::Result<Vec<String>, String> {
    let list = v
        .as_array()
        .ok_or_else(|| format!("\"{key}\" must be a list of strings"))?;
    list.iter()
        .map(|x| {
            x.as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("\"{key}\" must be a list of strings"))
        })
        .collect()
}

fn parse_task(line: &str, n: usize, known: &[&str]) -> std::result::Result<DatasetTask, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let obj: &Map<String, Value> = v.as_object().ok_or("a task must be a JSON object")?;
    if let Some(k) = obj.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(format!("unknown key {k:?} (allowed: {})", KEYS.join(", ")));
    }
    let id = text_of(obj.get("id").ok_or("missing \"id\"")?, "id")?;
    if id.is_empty() {
        return Err("\"id\" is empty".into());
    }
    let split = match obj.get("split").and_then(Value::as_str) {
        Some("train") => Split::Train,
        Some("heldout") => Split::Heldout,
        _ => return Err("\"split\" must be \"train\" or \"heldout\"".into()),
    };
    let prompt = match (obj.get("prompt"), obj.get("messages")) {
        (Some(Value::String(p)), None) if !p.trim().is_empty() => Prompt::Text(p.clone()),
        (Some(Value::String(_)), None) => return Err("\"prompt\" is empty".into()),
        (Some(_), None) => return Err("\"prompt\" must be a string".into()),
        (None, Some(m)) => Prompt::Messages(parse_messages(m)?),
        (Some(_), Some(_)) => return Err("give \"prompt\" or \"messages\", not both".into()),
        (None, None) => return Err("missing \"prompt\" (or \"messages\")".into()),
    };
    if let Some(Value::Array(list)) = obj.get("tools") {
        if list.iter().any(Value::is_object) {
            return inline_task(obj, id, split, prompt, n);
        }
    }
    if obj.contains_key("ground_truth") {
        return Err("\"ground_truth\" is for tasks whose \"tools\" are their own schemas".into());
    }
    let tools = match obj.get("tools") {
        None => Vec::new(),
        Some(v) => strings(v, "tools")?,
    };
    if let Some(t) = tools.iter().find(|t| !known.contains(&t.as_str())) {
        return Err(format!(
            "unknown tool {t:?} (the config's tools: {})",
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        ));
    }
    let answer = text_of(obj.get("answer").ok_or("missing \"answer\"")?, "answer")?;
    let rule_name = match obj.get("rule") {
        None => "exact",
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err("\"rule\" must be a string".into()),
    };
    let only = |key: &str, rule: &str| -> std::result::Result<(), String> {
        if obj.contains_key(key) && rule_name != rule {
            Err(format!("\"{key}\" belongs to rule \"{rule}\""))
        } else {
            Ok(())
        }
    };
    only("tolerance", "number")?;
    only("pattern", "regex")?;
    only("accept", "one_of")?;
    let rule = match rule_name {
        "exact" => AnswerRule::Exact,
        "number" => {
            let tolerance = match obj.get("tolerance") {
                None => 0.0,
                Some(t) => t
                    .as_f64()
                    .filter(|t| t.is_finite() && *t >= 0.0)
                    .ok_or("\"tolerance\" must be a number >= 0")?,
            };
            if read_number(&answer).is_none() {
                return Err(format!(
                    "rule \"number\" needs a numeric answer, got {answer:?}"
                ));
            }
            AnswerRule::Number { tolerance }
        }
        "regex" => {
            let pattern = obj
                .get("pattern")
                .and_then(Value::as_str)
                .ok_or("rule \"regex\" needs a string \"pattern\"")?;
            let re = regex::Regex::new(pattern)
                .map_err(|e| format!("bad \"pattern\": {}", e.to_string().replace('\n', " ")))?;
            AnswerRule::Regex(re)
        }
        "one_of" => AnswerRule::OneOf(strings(
            obj.get("accept")
                .ok_or("rule \"one_of\" needs \"accept\"")?,
            "accept",
        )?),
        other => {
            return Err(format!(
                "unknown rule {other:?} (exact, number, regex, one_of)"
            ))
        }
    };
    let calls = match obj.get("calls") {
        None | Some(Value::Null) => None,
        Some(Value::Array(list)) => {
            let mut calls = Vec::new();
            for (j, c) in list.iter().enumerate() {
                let call = parse_call_json(c).map_err(|e| format!("calls[{j}]: {e}"))?;
                if !tools.contains(&call.name) {
                    return Err(format!(
                        "calls[{j}] uses {:?}, which is not in the task's \"tools\"",
                        call.name
                    ));
                }
                calls.push(call);
            }
            Some(calls)
        }
        Some(_) => return Err("\"calls\" must be a list".into()),
    };
    Ok(DatasetTask {
        id,
        split,
        prompt,
        tools,
        answer,
        rule,
        calls,
        line: n,
        inline: None,
    })
}

/// JSON-schema types a parameter of an inline tool may have.
const SCHEMA_TYPES: [&str; 7] = [
    "string", "integer", "number", "boolean", "array", "object", "null",
];

/// One OpenAI tool schema of a task's own tools.
fn inline_tool(v: &Value) -> std::result::Result<crate::env::ToolSpec, String> {
    let f = match (v.get("type").and_then(Value::as_str), v.get("function")) {
        (Some("function"), Some(f @ Value::Object(_))) => f,
        _ => return Err("is not {\"type\": \"function\", \"function\": {…}}".into()),
    };
    let name = f["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or("has no \"name\"")?;
    let parameters = match f.get("parameters") {
        None => serde_json::json!({"type": "object", "properties": {}}),
        Some(p @ Value::Object(_)) => p.clone(),
        Some(_) => return Err(format!("{name}: \"parameters\" must be an object")),
    };
    for (param, schema) in parameters["properties"].as_object().into_iter().flatten() {
        if let Some(t) = schema.get("type") {
            if !t.as_str().is_some_and(|t| SCHEMA_TYPES.contains(&t)) {
                return Err(format!(
                    "{name}: parameter {param:?} has the type {t}, not one of {}",
                    SCHEMA_TYPES.join(", ")
                ));
            }
        }
    }
    Ok(crate::env::ToolSpec {
        name: name.to_string(),
        description: f["description"].as_str().unwrap_or_default().to_string(),
        parameters,
    })
}

/// A task that brings its own tools (OpenAI schemas), graded by its `calls` or `ground_truth`.
fn inline_task(
    obj: &Map<String, Value>,
    id: String,
    split: Split,
    prompt: Prompt,
    n: usize,
) -> std::result::Result<DatasetTask, String> {
    use super::bfcl::check::Checker;
    for key in ["answer", "rule", "tolerance", "pattern", "accept"] {
        if obj.contains_key(key) {
            return Err(format!(
                "\"{key}\": a task with its own tools is graded by its calls, not an answer"
            ));
        }
    }
    let list = obj["tools"].as_array().expect("checked by the caller");
    let specs = list
        .iter()
        .enumerate()
        .map(|(j, t)| inline_tool(t).map_err(|e| format!("tools[{j}] {e}")))
        .collect::<std::result::Result<Vec<_>, String>>()?;
    let offered = |name: &str, what: String| -> std::result::Result<(), String> {
        match specs.iter().any(|t| t.name == name) {
            true => Ok(()),
            false => Err(format!(
                "{what} uses {name:?}, which is not among the task's tools"
            )),
        }
    };
    let answers: Vec<Map<String, Value>> = match (obj.get("calls"), obj.get("ground_truth")) {
        (Some(_), Some(_)) => return Err("give \"calls\" or \"ground_truth\", not both".into()),
        (None, None) => {
            return Err("a task with its own tools needs \"calls\" (or \"ground_truth\")".into())
        }
        (Some(calls), None) => {
            let calls = calls.as_array().ok_or("\"calls\" must be a list")?;
            let mut answers = Vec::new();
            for (j, c) in calls.iter().enumerate() {
                let (name, args) =
                    super::calls::raw_call(c).map_err(|e| format!("calls[{j}]: {e}"))?;
                offered(&name, format!("calls[{j}]"))?;
                let params: Map<String, Value> = args
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), Value::Array(vec![v.clone()])))
                    .collect();
                let mut answer = Map::new();
                answer.insert(name, Value::Object(params));
                answers.push(answer);
            }
            answers
        }
        (None, Some(truth)) => {
            let truth = truth.as_array().ok_or("\"ground_truth\" must be a list")?;
            let mut answers = Vec::new();
            for (j, c) in truth.iter().enumerate() {
                let bad =
                    || format!("ground_truth[{j}] is not {{name: {{param: [acceptable values]}}}}");
                let call = c.as_object().filter(|m| m.len() == 1).ok_or_else(bad)?;
                let (name, params) = call.iter().next().ok_or_else(bad)?;
                let params = params.as_object().ok_or_else(bad)?;
                if params.values().any(|v| !v.is_array()) {
                    return Err(bad());
                }
                offered(name, format!("ground_truth[{j}]"))?;
                answers.push(call.clone());
            }
            answers
        }
    };
    let rule = CallsRule {
        checker: if answers.is_empty() {
            Checker::Irrelevance
        } else {
            Checker::Parallel
        },
        functions: specs
            .iter()
            .map(super::bfcl::source::bfcl_function)
            .collect(),
        answers,
    };
    let calls = rule
        .first_acceptable()
        .iter()
        .map(|(name, args)| super::calls::call_of(name, args))
        .collect();
    Ok(DatasetTask {
        id,
        split,
        prompt,
        tools: specs.iter().map(|t| t.name.clone()).collect(),
        answer: String::new(),
        rule: AnswerRule::Calls(std::sync::Arc::new(rule)),
        calls: Some(calls),
        line: n,
        inline: Some(specs.into()),
    })
}

fn parse_messages(v: &Value) -> std::result::Result<Vec<Value>, String> {
    let list = v.as_array().ok_or("\"messages\" must be a list")?;
    let mut users = 0;
    for (j, m) in list.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str);
        let content = m.get("content").and_then(Value::as_str);
        match (role, content) {
            (Some("user"), Some(_)) => users += 1,
            (Some("system"), Some(_)) => {}
            (Some(r), Some(_)) => {
                return Err(format!(
                    "messages[{j}]: role {r:?} (a prompt has system and user messages)"
                ))
            }
            _ => {
                return Err(format!(
                    "messages[{j}] needs string \"role\" and \"content\""
                ))
            }
        }
    }
    if users == 0 {
        return Err("\"messages\" has no user message".into());
    }
    Ok(list.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TOOLS: [&str; 2] = ["distance", "area"];

    proptest! {
        /// Random bytes, and random damage to a good line, give a dataset or an error naming
        /// the line, never a panic.
        #[test]
        fn prop_random_lines_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..200),
            at in 0usize..200,
            byte in any::<u8>(),
        ) {
            let text = String::from_utf8_lossy(&bytes);
            let _ = parse(&text);
            let mut good = br#"{"id": 1, "split": "train", "prompt": "p", "tools": ["area"], "answer": 2, "rule": "number", "tolerance": 1, "calls": [{"name": "area", "arguments": {"w": 1}}]}"#.to_vec();
            let i = at % good.len();
            good[i] = byte;
            if let Err(e) = parse(&String::from_utf8_lossy(&good)) {
                prop_assert!(e.to_string().starts_with("tasks.jsonl:1: "), "{}", e);
            }
        }
    }

    fn parse(text: &str) -> Result<Dataset> {
        Dataset::parse(text, "tasks.jsonl", &TOOLS)
    }

    #[test]
    fn a_good_file_loads_with_its_rules_prompts_and_calls() {
        let text = r#"{"id": "a", "split": "train", "prompt": "How far?", "tools": ["distance"], "answer": 392, "rule": "number", "tolerance": 5, "calls": [{"name": "distance", "arguments": {"from": "Paris", "to": "Lyon"}}]}

{"id": 7, "split": "heldout", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital?"}], "answer": "Paris", "rule": "one_of", "accept": ["paris", "Paris, France"]}
{"id": "c", "split": "train", "prompt": "Code?", "answer": "x", "rule": "regex", "pattern": "[A-Z]{3}-\\d+"}
"#;
        let d = parse(text).unwrap();
        assert_eq!((d.train.len(), d.heldout.len(), d.len()), (2, 1, 3));
        let a = d.get("a").unwrap();
        assert_eq!(a.rule, AnswerRule::Number { tolerance: 5.0 });
        assert_eq!(a.answer, "392");
        assert_eq!(
            a.calls.as_ref().unwrap()[0],
            Call::new("distance", &[("from", "Paris"), ("to", "Lyon")])
        );
        let b = d.get("7").unwrap();
        assert_eq!((b.split, b.line), (Split::Heldout, 3));
        assert_eq!(b.prompt.question(), "Capital?");
        assert_eq!(b.tools, Vec::<String>::new());
        assert!(d.get("nope").is_none());
    }

    #[test]
    fn answer_rules_accept_what_they_say() {
        let n = AnswerRule::Number { tolerance: 0.5 };
        assert!(n.accepts("1234", " 1,234.4 "));
        assert!(!n.accepts("1234", "1235"));
        assert!(!n.accepts("1234", "about 1234"));
        let e = AnswerRule::Exact;
        assert!(e.accepts("Paris", " paris\n") && e.accepts("12", "12.0"));
        assert!(!e.accepts("Paris", "Paris, France"));
        let r = AnswerRule::Regex(regex::Regex::new(r"[A-Z]{3}-\d+").unwrap());
        assert!(r.accepts("", "ABC-12"));
        assert!(!r.accepts("", "xABC-12"), "the whole answer must match");
        let o = AnswerRule::OneOf(vec!["Paris, France".into()]);
        assert!(o.accepts("Paris", "PARIS") && o.accepts("Paris", "paris, france"));
        assert!(!o.accepts("Paris", "Lyon"));
    }

    #[test]
    fn every_bad_line_is_reported_with_file_and_line() {
        let lines = [
            r#"{"id": "ok", "split": "train", "prompt": "p", "answer": "1"}"#,
            r#"not json"#,
            r#"{"id": "ok", "split": "train", "prompt": "p", "answer": "1"}"#,
            r#"{"id": "x", "split": "test", "prompt": "p", "answer": "1"}"#,
            r#"{"id": "y", "split": "train", "answer": "1"}"#,
            r#"{"id": "z", "split": "train", "prompt": "p", "tools": ["geo"], "answer": "1"}"#,
            r#"{"id": "w", "split": "train", "prompt": "p", "answer": "one", "rule": "number"}"#,
            r#"{"id": "v", "split": "train", "prompt": "p", "answer": "1", "rule": "regex", "pattern": "("}"#,
            r#"{"id": "u", "split": "train", "prompt": "p", "tools": ["area"], "answer": "1", "calls": [{"name": "distance"}]}"#,
            r#"{"id": "t", "split": "train", "prompt": "p", "answer": "1", "colour": 1}"#,
            r#"{"id": "s", "split": "train", "messages": [{"role": "system", "content": "x"}], "answer": "1"}"#,
            r#"{"id": "r", "split": "train", "prompt": "p", "answer": "1", "tolerance": 1}"#,
        ];
        let msg = parse(&lines.join("\n")).unwrap_err().to_string();
        let got: Vec<&str> = msg.lines().collect();
        let want = [
            ("tasks.jsonl:2: ", "not JSON"),
            ("tasks.jsonl:3: ", "already used on line 1"),
            ("tasks.jsonl:4: ", "\"split\""),
            ("tasks.jsonl:5: ", "missing \"prompt\""),
            ("tasks.jsonl:6: ", "unknown tool \"geo\""),
            ("tasks.jsonl:7: ", "numeric answer"),
            ("tasks.jsonl:8: ", "bad \"pattern\""),
            ("tasks.jsonl:9: ", "not in the task's \"tools\""),
            ("tasks.jsonl:10: ", "unknown key \"colour\""),
            ("tasks.jsonl:11: ", "no user message"),
            ("tasks.jsonl:12: ", "belongs to rule \"number\""),
        ];
        assert_eq!(got.len(), want.len(), "{msg}");
        for (line, (at, says)) in got.iter().zip(want) {
            assert!(
                line.starts_with(at) && line.contains(says),
                "{line:?}: {says}"
            );
        }
    }

    #[test]
    fn many_bad_lines_are_counted_after_the_first_twenty() {
        let text = "x\n".repeat(25);
        let msg = parse(&text).unwrap_err().to_string();
        assert_eq!(msg.lines().count(), 21);
        assert!(
            msg.ends_with("… and 5 more bad lines in tasks.jsonl"),
            "{msg}"
        );
    }

    #[test]
    fn a_file_without_training_tasks_is_refused() {
        let msg = parse(r#"{"id": 1, "split": "heldout", "prompt": "p", "answer": "1"}"#)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("no task with split \"train\""), "{msg}");
    }

    #[test]
    fn a_hundred_thousand_lines_load() {
        let mut text = String::new();
        for i in 0..100_000 {
            let split = if i % 10 == 0 { "heldout" } else { "train" };
            text.push_str(&format!(
                "{{\"id\": {i}, \"split\": \"{split}\", \"prompt\": \"What is the area of a {i} by 2 rectangle?\", \"tools\": [\"area\"], \"answer\": {}, \"rule\": \"number\", \"calls\": [{{\"name\": \"area\", \"arguments\": {{\"w\": {i}, \"h\": 2}}}}]}}\n",
                2 * i
            ));
        }
        let d = parse(&text).unwrap();
        assert_eq!((d.train.len(), d.heldout.len()), (90_000, 10_000));
        assert_eq!(d.get("99999").unwrap().answer, "199998");
    }
}

/// A dataset as a task source: its tasks, the tools of `[[tools]]` that run their calls, and
/// the seed that picks an actor's training tasks. Items are (split, index) pairs.
#[derive(Debug, Clone)]
pub struct DatasetSource {
    pub data: std::sync::Arc<Dataset>,
    pub tools: super::toolbox::ToolBox,
    pub seed: u64,
}

/// A task of a [`DatasetSource`]: its split and index there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskRef {
    pub split: Split,
    pub index: usize,
}

impl DatasetSource {
    /// The task `item` points at.
    pub fn task(&self, item: &TaskRef) -> &DatasetTask {
        let list = self.data.split(item.split);
        &list[item.index % list.len()]
    }
}

impl crate::env::TaskSource for DatasetSource {
    type Item = TaskRef;

    /// A training task drawn uniformly from the prompt's own stream.
    fn prompt_item(&self, id: &crate::ids::PromptId) -> TaskRef {
        use rand::Rng;
        let n = self.data.train.len();
        TaskRef {
            split: Split::Train,
            index: id.item_stream(self.seed).gen_range(0..n),
        }
    }

    /// Task `index` of `split`, cycling; a dataset without held-out tasks evaluates on its
    /// training tasks.
    fn item(&self, split: Split, index: u64) -> TaskRef {
        let split = if self.data.split(split).is_empty() {
            Split::Train
        } else {
            split
        };
        let n = self.data.split(split).len() as u64;
        TaskRef {
            split,
            index: (index % n) as usize,
        }
    }

    fn prompt(&self, item: &TaskRef) -> String {
        self.task(item).prompt.question().to_string()
    }

    fn tools(&self, item: &TaskRef) -> Vec<crate::env::ToolSpec> {
        if let Some(inline) = &self.task(item).inline {
            return inline.to_vec();
        }
        self.task(item)
            .tools
            .iter()
            .filter_map(|name| self.tools.spec(name))
            .collect()
    }

    fn gold(&self, item: &TaskRef) -> Option<super::reward::Gold> {
        let t = self.task(item);
        Some(super::reward::Gold {
            calls: t.calls.clone().unwrap_or_default(),
            rule: t.rule.clone(),
            answer: t.answer.clone(),
            needed: Vec::new(),
        })
    }

    fn name(&self) -> String {
        "dataset".into()
    }

    fn split_len(&self, split: Split) -> Option<usize> {
        Some(self.data.split(self.item(split, 0).split).len())
    }

    /// The task of the line's `id` (a string or a number).
    fn locate(
        &self,
        id: Option<&serde_json::Value>,
        _prompt: &str,
    ) -> std::result::Result<TaskRef, String> {
        let id = match id {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            _ => return Err("a dataset's line needs its task's \"id\"".to_string()),
        };
        let (split, index) = self
            .data
            .position(&id)
            .ok_or_else(|| format!("no task {id:?} in the dataset"))?;
        Ok(TaskRef { split, index })
    }

    fn item_id(&self, item: &TaskRef) -> Option<String> {
        Some(self.task(item).id.clone())
    }

    /// A task with its own tools is call-only.
    fn call_only(&self, item: &TaskRef) -> bool {
        self.task(item).inline.is_some()
    }
}

impl crate::env::ToolSet<TaskRef> for DatasetSource {
    /// Runs a call to one of the task's tools (a tool it was not offered is an error).
    fn execute(&self, item: &TaskRef, call: &Call) -> std::result::Result<String, String> {
        if !self.task(item).tools.contains(&call.name) {
            return Err(format!("unknown tool {:?}", call.name));
        }
        self.tools.execute(call)
    }

    /// Runs the calls together: each external tool gets its calls in one exchange.
    fn execute_batch(
        &self,
        calls: &[(&TaskRef, &Call)],
    ) -> Vec<std::result::Result<String, String>> {
        let offered: Vec<bool> = calls
            .iter()
            .map(|(item, call)| self.task(item).tools.contains(&call.name))
            .collect();
        let run: Vec<Call> = calls
            .iter()
            .zip(&offered)
            .filter(|(_, &ok)| ok)
            .map(|((_, call), _)| (*call).clone())
            .collect();
        let mut results = self.tools.execute_many(&run).into_iter();
        calls
            .iter()
            .zip(offered)
            .map(|((_, call), ok)| match ok {
                true => results.next().unwrap_or_else(|| Err("no result".into())),
                false => Err(format!("unknown tool {:?}", call.name)),
            })
            .collect()
    }
}

#[cfg(test)]
mod source_tests {
    use super::*;
    use crate::env::tool_use::toolbox::ToolConfig;
    use crate::env::{TaskSource, ToolSet};
    use crate::ids::SourceId;

    fn source() -> DatasetSource {
        let text = r#"{"id": "a", "split": "train", "prompt": "What is 2 plus 40?", "tools": ["plus"], "answer": "42", "calls": [{"name": "plus", "arguments": {"a": 2, "b": 40}}]}
{"id": "b", "split": "train", "prompt": "Say hi.", "answer": "hi", "rule": "one_of", "accept": ["hello"]}
{"id": "c", "split": "heldout", "prompt": "What is 1 plus 1?", "tools": ["plus"], "answer": 2, "rule": "number", "tolerance": 0.5}
"#;
        let tools: std::sync::Arc<[ToolConfig]> = vec![ToolConfig {
            name: "plus".into(),
            description: "a + b".into(),
            parameters: serde_json::json!({"type": "object", "properties": {
                "a": {"type": "integer"}, "b": {"type": "integer"}}}),
            builtin: Some("add".into()),
            command: None,
            timeout_ms: 1000,
        }]
        .into();
        DatasetSource {
            data: std::sync::Arc::new(Dataset::parse(text, "t.jsonl", &["plus"]).unwrap()),
            tools: super::super::toolbox::ToolBox::new(tools, None),
            seed: 3,
        }
    }

    #[test]
    fn a_dataset_serves_items_tools_gold_and_calls() {
        let s = source();
        let a = s.item(Split::Train, 0);
        assert_eq!(s.prompt(&a), "What is 2 plus 40?");
        assert_eq!(s.tools(&a)[0].name, "plus");
        let gold = s.gold(&a).unwrap();
        assert_eq!(
            gold.calls,
            vec![Call::new("plus", &[("a", "2"), ("b", "40")])]
        );
        assert_eq!(s.execute(&a, &gold.calls[0]), Ok("42".into()));
        let b = s.item(Split::Train, 1);
        assert!(s.tools(&b).is_empty());
        assert!(s
            .execute(&b, &gold.calls[0])
            .unwrap_err()
            .contains("unknown tool"));
        assert!(s.gold(&b).unwrap().rule.accepts("hi", "Hello"));
        let c = s.item(Split::Heldout, 7);
        assert_eq!(s.task(&c).id, "c");
        assert!(s.gold(&c).unwrap().rule.accepts("2", "2.4"));
        // Training draws are the prompt's own: the same id, the same task.
        let id = SourceId::new(0, 1, 0).prompt(5, 2);
        assert_eq!(s.prompt_item(&id), s.prompt_item(&id));
        let drawn: std::collections::HashSet<usize> = (0..40)
            .map(|m| s.prompt_item(&SourceId::new(0, 1, 0).prompt(m, 0)).index)
            .collect();
        assert_eq!(drawn.len(), 2, "both training tasks are drawn, no other");
    }

    #[test]
    fn the_calls_of_a_decoding_step_reach_an_external_tool_together() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("plus.py");
        std::fs::write(
            &script,
            "import json, sys\nfor line in sys.stdin:\n    r = json.loads(line)\n    a = r['arguments']\n    print(json.dumps({'id': r['id'], 'result': a['a'] + a['b']}), flush=True)\n",
        )
        .unwrap();
        let mut s = source();
        let tool = ToolConfig {
            name: "plus".into(),
            description: "a + b".into(),
            parameters: serde_json::json!({"type": "object", "properties": {
                "a": {"type": "integer"}, "b": {"type": "integer"}}}),
            builtin: None,
            command: Some(vec!["python3".into(), script.display().to_string()]),
            timeout_ms: 20_000,
        };
        s.tools = super::super::toolbox::ToolBox::new(vec![tool].into(), None);
        let (a, b) = (s.item(Split::Train, 0), s.item(Split::Train, 1));
        let (x, y) = (
            Call::new("plus", &[("a", "2"), ("b", "40")]),
            Call::new("plus", &[("a", "1"), ("b", "1")]),
        );
        let got = s.execute_batch(&[(&a, &x), (&b, &x), (&a, &y)]);
        assert_eq!(got[0], Ok("42".into()));
        assert!(
            got[1].as_ref().unwrap_err().contains("unknown tool"),
            "{got:?}"
        );
        assert_eq!(got[2], Ok("2".into()));
        assert_eq!(s.tools.exchanges(), 1, "one exchange for the step's calls");
        // One at a time, as before: the same answers.
        assert_eq!(s.execute(&a, &y), Ok("2".into()));
        assert_eq!(s.tools.exchanges(), 2);
    }

    #[test]
    fn tasks_may_bring_their_own_tools_as_openai_schemas() {
        use serde_json::json;
        let tool = r#"{"type": "function", "function": {"name": "forecast", "description": "Weather.", "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}, "hourly": {"type": "boolean"}}, "required": ["city", "days"]}}}"#;
        let other = r#"{"type": "function", "function": {"name": "tides", "parameters": {"type": "object", "properties": {"port": {"type": "string"}}}}}"#;
        let text = format!(
            r#"{{"id": "w1", "split": "train", "prompt": "Paris and Brest tides, 3 days?", "tools": [{tool}, {other}], "calls": [{{"name": "forecast", "arguments": {{"city": "Paris", "days": 3}}}}, {{"name": "tides", "arguments": {{"port": "Brest"}}}}]}}
{{"id": "w2", "split": "heldout", "prompt": "Paris, 2 days.", "tools": [{tool}], "ground_truth": [{{"forecast": {{"city": ["Paris", "Paris, France"], "days": [2], "hourly": ["", false]}}}}]}}
{{"id": "w3", "split": "heldout", "prompt": "Tell me a joke.", "tools": [{tool}], "calls": []}}
"#
        );
        let s = DatasetSource {
            data: std::sync::Arc::new(Dataset::parse(&text, "own.jsonl", &[]).unwrap()),
            tools: super::super::toolbox::ToolBox::new(Vec::new().into(), None),
            seed: 1,
        };
        let grade = |id: &str, calls: Vec<(&str, serde_json::Value)>| {
            let item = s.locate(Some(&json!(id)), "").unwrap();
            assert!(s.call_only(&item));
            let AnswerRule::Calls(rule) = s.gold(&item).unwrap().rule else {
                panic!("a calls rule")
            };
            let calls: Vec<_> = calls.into_iter().map(|(n, a)| (n.to_string(), a)).collect();
            rule.verdict(&calls).is_ok()
        };
        let w1 = s.locate(Some(&json!("w1")), "").unwrap();
        let names: Vec<String> = s.tools(&w1).into_iter().map(|t| t.name).collect();
        assert_eq!(names, ["forecast", "tides"]);
        // Any order; exact values (strings after BFCL's standardisation); nothing extra.
        assert!(grade(
            "w1",
            vec![
                ("tides", json!({"port": "brest"})),
                ("forecast", json!({"city": "Paris", "days": 3}))
            ]
        ));
        assert!(!grade(
            "w1",
            vec![("forecast", json!({"city": "Paris", "days": 3}))]
        ));
        assert!(!grade(
            "w1",
            vec![
                ("tides", json!({"port": "Brest"})),
                (
                    "forecast",
                    json!({"city": "Paris", "days": 3, "hourly": true})
                )
            ]
        ));
        // Ground truth: acceptable values, an optional parameter.
        assert!(grade(
            "w2",
            vec![("forecast", json!({"city": "Paris, France", "days": 2}))]
        ));
        assert!(grade(
            "w2",
            vec![(
                "forecast",
                json!({"city": "Paris", "days": 2, "hourly": false})
            )]
        ));
        assert!(!grade(
            "w2",
            vec![("forecast", json!({"city": "Paris", "days": 2.5}))]
        ));
        // No gold call: right only without a call.
        assert!(grade("w3", vec![]));
        assert!(!grade(
            "w3",
            vec![("forecast", json!({"city": "Paris", "days": 1}))]
        ));
        // Bad lines name the reason.
        for (line, want) in [
            (format!(r#"{{"id": 1, "split": "train", "prompt": "p", "tools": [{tool}], "calls": [], "answer": "x"}}"#), "graded by its calls"),
            (format!(r#"{{"id": 1, "split": "train", "prompt": "p", "tools": [{tool}]}}"#), "needs \"calls\""),
            (format!(r#"{{"id": 1, "split": "train", "prompt": "p", "tools": [{tool}], "calls": [{{"name": "radar"}}]}}"#), "calls[0] uses \"radar\""),
            (format!(r#"{{"id": 1, "split": "train", "prompt": "p", "tools": [{}], "calls": []}}"#, tool.replace("\"integer\"", "\"int\"")), "parameter \"days\" has the type \"int\""),
            (format!(r#"{{"id": 1, "split": "train", "prompt": "p", "tools": [{tool}], "ground_truth": [{{"forecast": {{"days": 2}}}}]}}"#), "ground_truth[0] is not"),
            (r#"{"id": 1, "split": "train", "prompt": "p", "tools": [{"type": "code"}], "calls": []}"#.to_string(), "tools[0] is not"),
        ] {
            let err = Dataset::parse(&line, "own.jsonl", &[]).unwrap_err().to_string();
            assert!(err.contains("own.jsonl:1: ") && err.contains(want), "{err}");
        }
    }
}
