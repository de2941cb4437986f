//! Scoring lines of any model's episodes in the common JSON function-call form (plain calls,
//! OpenAI tool calls, whole `messages` logs, or a raw Hermes-style completion) with a task
//! source's tools and rewards: what `asymre score` does. One call's JSON form is
//! [`super::calls`]; episodes are written in it by their protocol.
use std::io::BufRead;

use serde::Serialize;
use serde_json::Value;

use super::calls::{call_of, raw_call, RawCall};
use super::reward::{self, Attempt, Call, RewardConfig, Score, ScoreMeans};
use crate::env::{TaskSource, ToolSet};
use crate::formats::lines::capped_lines;

/// The top-level keys a scored line may have.
const LINE_KEYS: [&str; 8] = [
    "id",
    "prompt",
    "completion",
    "calls",
    "tool_calls",
    "results",
    "answer",
    "messages",
];

/// What a line says the model did: its prompt, calls and final answer.
struct Transcript {
    prompt: String,
    /// The calls as written (any JSON values).
    calls: Vec<RawCall>,
    answer: Option<String>,
    /// Calls written that are not a call (a raw completion's bad `<tool_call>` JSON).
    bad_calls: u32,
}

fn parse_calls(v: Option<&Value>, key: &str) -> Result<Vec<RawCall>, String> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a.iter().map(raw_call).collect(),
        Some(_) => Err(format!("\"{key}\" must be an array")),
    }
}

/// A message's text: a string, or OpenAI's list of content parts (`{"type": "text", "text": …}`).
fn message_text(v: Option<&Value>) -> Result<Option<String>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for part in parts {
                match part.get("text").and_then(Value::as_str) {
                    Some(t) => text.push_str(t),
                    None => return Err("a content part without \"text\"".into()),
                }
            }
            Ok(Some(text))
        }
        Some(_) => Err("\"content\" must be a string or a list of text parts".into()),
    }
}

/// Reads a whole OpenAI `messages` log: the first user message is the prompt, every assistant
/// `tool_calls` entry a call (in order), the last assistant message with text and no calls after
/// it the answer (read
/// with the chat answer rule, [`super::protocol::chat::answer_of`]: `The answer is 42.` is 42). Tool
/// results are not read: the calls are executed again.
fn parse_messages(messages: &Value) -> Result<Transcript, String> {
    let messages = messages.as_array().ok_or("\"messages\" must be an array")?;
    let (mut prompt, mut calls, mut answer) = (None, Vec::new(), None);
    for (i, m) in messages.iter().enumerate() {
        let at = |e: String| format!("messages[{i}]: {e}");
        let obj = m.as_object().ok_or_else(|| at("not an object".into()))?;
        for key in obj.keys() {
            if ![
                "role",
                "content",
                "tool_calls",
                "tool_call_id",
                "name",
                "refusal",
            ]
            .contains(&key.as_str())
            {
                return Err(at(format!("unknown key {key:?}")));
            }
        }
        let role = obj
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| at("a message needs a string \"role\"".into()))?;
        let text = message_text(obj.get("content")).map_err(at)?;
        match role {
            "system" | "developer" | "tool" => {}
            "user" => {
                if prompt.is_none() {
                    prompt = Some(text.ok_or_else(|| at("a user message without content".into()))?);
                }
            }
            "assistant" => {
                let made = parse_calls(obj.get("tool_calls"), "tool_calls").map_err(at)?;
                if !made.is_empty() {
                    // A turn that calls tools is not the final answer, whatever text it has.
                    answer = None;
                } else if let Some(t) = text.filter(|t| !t.trim().is_empty()) {
                    answer = Some(t.trim().to_string());
                }
                calls.extend(made);
            }
            other => return Err(at(format!("unknown role {other:?}"))),
        }
    }
    Ok(Transcript {
        prompt: prompt.ok_or("\"messages\" has no user message")?,
        calls,
        // Chat text is read with the chat protocol's answer rule.
        answer: answer.and_then(|a| super::protocol::chat::answer_of(&a)),
        bad_calls: 0,
    })
}

/// Reads a line in any of the accepted forms (see [`score_line`]).
fn parse_transcript(v: &Value) -> Result<Transcript, String> {
    let obj = v.as_object().ok_or("a line must be a JSON object")?;
    for key in obj.keys() {
        if !LINE_KEYS.contains(&key.as_str()) {
            return Err(format!(
                "unknown key {key:?} (allowed: {})",
                LINE_KEYS.join(", ")
            ));
        }
    }
    if let Some(messages) = obj.get("messages") {
        for key in ["prompt", "calls", "tool_calls", "answer"] {
            if obj.contains_key(key) {
                return Err(format!(
                    "\"messages\" and \"{key}\" on one line: give one form"
                ));
            }
        }
        return parse_messages(messages);
    }
    if let Some(completion) = obj.get("completion") {
        for key in ["calls", "tool_calls", "answer"] {
            if obj.contains_key(key) {
                return Err(format!(
                    "\"completion\" and \"{key}\" on one line: give one form"
                ));
            }
        }
        let prompt = obj
            .get("prompt")
            .and_then(Value::as_str)
            .ok_or("missing string \"prompt\" beside \"completion\"")?;
        let text = completion
            .as_str()
            .ok_or("\"completion\" must be a string")?;
        let (calls, answer, bad_calls) = super::protocol::chat::read_turn(text);
        return Ok(Transcript {
            prompt: prompt.to_string(),
            calls,
            answer,
            bad_calls,
        });
    }
    if obj.contains_key("calls") && obj.contains_key("tool_calls") {
        return Err("\"calls\" and \"tool_calls\" on one line: give one".into());
    }
    let prompt = obj
        .get("prompt")
        .and_then(Value::as_str)
        .ok_or("missing string \"prompt\" (or a \"messages\" log)")?;
    let calls = match obj.get("tool_calls") {
        Some(v) => parse_calls(Some(v), "tool_calls")?,
        None => parse_calls(obj.get("calls"), "calls")?,
    };
    let answer = match obj.get("answer") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(_) => return Err("\"answer\" must be a string or a number".into()),
    };
    Ok(Transcript {
        prompt: prompt.to_string(),
        calls,
        answer,
        bad_calls: 0,
    })
}

/// Scores one JSON line. Accepted forms: `{"prompt", "calls" | "tool_calls", "answer"}` with
/// calls in the plain or the OpenAI form, a whole OpenAI `{"messages": [...]}` log, or
/// `{"prompt", "completion"}` with one assistant turn's raw text in the Hermes form
/// (`<tool_call>{…}</tool_call>` blocks, else an answer); `id` and
/// `results` may be present (results are ignored). Any other key is an error. The prompt names
/// the item (or, for a dataset, its `id` does: [`TaskSource::locate`]), the calls are re-executed
/// with the task's tools, the answer is compared exactly.
pub fn score_line<T: TaskSource + ToolSet<T::Item>>(
    task: &T,
    cfg: &RewardConfig,
    line: &str,
) -> Result<Score, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let Transcript {
        prompt,
        calls,
        answer,
        bad_calls,
    } = parse_transcript(&v)?;
    let item = task.locate(v.get("id"), &prompt)?;
    let gold = task.gold(&item).ok_or(
        "the task has no answer for this prompt (an unknown entity or invalid arithmetic)",
    )?;
    let raw_calls = calls;
    let calls: Vec<Call> = raw_calls.iter().map(|(n, a)| call_of(n, a)).collect();
    // A call-only task's calls are graded, not run (nothing to fail, no answer to give).
    let (results, format_errors) = if task.call_only(&item) {
        (vec![None; calls.len()], bad_calls)
    } else {
        let results: Vec<Option<String>> =
            calls.iter().map(|c| task.execute(&item, c).ok()).collect();
        let failed = results.iter().filter(|r| r.is_none()).count() as u32;
        (results, failed + u32::from(answer.is_none()) + bad_calls)
    };
    let attempt = Attempt {
        calls,
        results,
        answer,
        format_errors,
        raw_calls,
        ..Attempt::default()
    };
    Ok(reward::score(cfg, &attempt, &gold))
}

/// Aggregate of a scored file.
#[derive(Debug, Default, Serialize)]
pub struct ScoreTotals {
    pub lines: usize,
    pub bad_lines: usize,
    /// Means over the scored lines (`episodes` of them).
    pub means: ScoreMeans,
}

/// The longest line `score` reads: an episode with its messages is kilobytes; a longer line
/// is a bad line, skipped without being held in memory.
pub const MAX_SCORED_LINE: usize = 16 << 20;

/// Scores every line of `input` with `score`, calling `each` with (line number, result); bad
/// lines (too long, not UTF-8, not scorable) are reported and skipped. Returns the means over
/// the scored lines.
pub fn score_lines(
    input: impl BufRead,
    score: impl Fn(&str) -> Result<Score, String>,
    mut each: impl FnMut(usize, &Result<Score, String>),
) -> std::io::Result<ScoreTotals> {
    let mut t = ScoreTotals::default();
    for line in capped_lines(input, MAX_SCORED_LINE) {
        let (n, text) = line?;
        if text.as_ref().is_ok_and(|l| l.trim().is_empty()) {
            continue;
        }
        t.lines += 1;
        let result = text.and_then(|l| score(&l));
        each(n, &result);
        match result {
            Ok(s) => t.means.add(&s, 0),
            Err(_) => t.bad_lines += 1,
        }
    }
    t.means = t.means.finish();
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::tool_use::protocol::{self, episode_json, Episode};
    use crate::env::tool_use::tasks::{Split, Task, TaskKind, TaskSpec};
    use proptest::prelude::*;
    use serde_json::json;

    proptest! {
        /// Random bytes, and random damage to a good line of every form, are scored or refused
        /// with a reason, never a panic.
        #[test]
        fn prop_random_score_lines_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..200),
            form in 0usize..3,
            at in 0usize..300,
            byte in any::<u8>(),
        ) {
            let task = lookup();
            let cfg = RewardConfig::default();
            let _ = score_line(&task, &cfg, &String::from_utf8_lossy(&bytes));
            let prompt = task.prompt(&task.item(Split::Train, 0));
            let good = [
                json!({"prompt": prompt, "calls": [{"name": "get", "arguments": {"ent": "e1", "attr": "age"}}], "answer": "3"}),
                json!({"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": null,
                    "tool_calls": [{"id": "1", "type": "function", "function": {"name": "get", "arguments": "{\"ent\": 1}"}}]},
                    {"role": "assistant", "content": "The answer is 3."}]}),
                json!({"prompt": prompt, "completion": "<tool_call>{\"name\": \"get\"}</tool_call>"}),
            ][form].to_string().into_bytes();
            let mut damaged = good.clone();
            let i = at % damaged.len();
            damaged[i] = byte;
            let _ = score_line(&task, &cfg, &String::from_utf8_lossy(&damaged));
        }
    }

    fn lookup() -> Task {
        Task::new(TaskSpec {
            kind: TaskKind::Lookup,
            seed: 0,
            digits: 2,
            no_call_share: 0.0,
            entities: 20,
            heldout_share: 0.2,
            chain_arith: false,
            width: 2,
            distractors: 0,
        })
    }

    #[test]
    fn a_played_demonstration_renders_to_json_that_scores_the_same() {
        let task = lookup();
        let item = task.item(Split::Train, 3);
        let (tokens, mask) = protocol::demonstration(&task, &item).unwrap();
        let limits = protocol::Limits::new(64, 4);
        let mut ep = Episode::new(&task, item.clone(), limits);
        for (t, m) in tokens.iter().zip(mask) {
            if m {
                ep.push_policy(*t, &task);
            } else {
                ep.take_forced();
            }
        }
        let line = episode_json(&task, &ep).to_string();
        let s = score_line(&task, &RewardConfig::default(), &line).unwrap();
        assert_eq!((s.completion, s.f1, s.format_errors), (1.0, 1.0, 0));
    }

    #[test]
    fn external_json_forms_and_bad_lines() {
        let task = lookup();
        let item = task.item(Split::Train, 0);
        let prompt = task.prompt(&item);
        let gold = task.gold(&item).unwrap();
        let call = &gold.calls[0];
        let as_string = serde_json::to_string(&call.arguments).unwrap();
        let lines = [
            json!({"prompt": prompt, "calls": [{"name": "get", "arguments": call.arguments}], "answer": gold.answer}).to_string(),
            json!({"prompt": prompt, "calls": [{"name": "get", "arguments": as_string}], "answer": gold.answer.parse::<i64>().unwrap()}).to_string(),
            "{\"prompt\": ".to_string(),
            json!({"prompt": "hello"}).to_string(),
            json!({"prompt": prompt, "calls": "nope"}).to_string(),
        ];
        let mut input = (lines.join("\n") + "\n").into_bytes();
        input.extend_from_slice(b"\xff\xfe\n");
        let mut seen = Vec::new();
        let cfg = RewardConfig::default();
        let totals = score_lines(
            input.as_slice(),
            |l| score_line(&task, &cfg, l),
            |n, r| seen.push((n, r.is_ok())),
        )
        .unwrap();
        assert_eq!(
            seen,
            vec![
                (1, true),
                (2, true),
                (3, false),
                (4, false),
                (5, false),
                (6, false)
            ]
        );
        assert_eq!((totals.means.episodes, totals.bad_lines), (2, 4));
        assert_eq!((totals.means.completion, totals.means.f1), (1.0, 1.0));
    }

    /// What the common clients write: OpenAI tool calls (the `function` wrapper, arguments as a
    /// JSON string) under `tool_calls` or `calls`, and whole `messages` logs; each scores what
    /// the same calls and answer score in the plain form. Unknown keys are errors, never ignored.
    #[test]
    fn openai_tool_calls_and_messages_score_like_the_plain_form() {
        let task = lookup();
        let item = task.item(Split::Train, 0);
        let prompt = task.prompt(&item);
        let gold = task.gold(&item).unwrap();
        let call = &gold.calls[0];
        let args = serde_json::to_string(&call.arguments).unwrap();
        let openai = json!({"id": "call_1", "type": "function",
                            "function": {"name": call.name, "arguments": args}});
        let cfg = RewardConfig::default();
        let score = |line: Value| score_line(&task, &cfg, &line.to_string());
        let plain = score(json!({"prompt": prompt, "calls": [{"name": call.name,
                   "arguments": call.arguments}], "answer": gold.answer}))
        .unwrap();
        assert_eq!((plain.completion, plain.f1), (1.0, 1.0));
        for line in [
            json!({"prompt": prompt, "tool_calls": [openai], "answer": gold.answer}),
            json!({"prompt": prompt, "calls": [openai], "answer": gold.answer}),
            json!({"id": 7, "messages": [
                {"role": "system", "content": "You can call tools."},
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": null, "tool_calls": [openai]},
                {"role": "tool", "tool_call_id": "call_1", "content": "whatever"},
                {"role": "assistant", "content": [{"type": "text", "text": gold.answer}]},
            ]}),
        ] {
            let s = score(line.clone()).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!(s, plain, "{line}");
        }
        // A log that ends on calls (an episode cut short) has no answer, whatever text came
        // with them or before them.
        let cut = json!({"messages": [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": gold.answer.clone()},
            {"role": "assistant", "content": gold.answer.clone(), "tool_calls": [openai]},
            {"role": "tool", "content": "whatever"},
        ]});
        assert_eq!(score(cut).unwrap().completion, 0.0);
        // A wrong call in the OpenAI form is scored as wrong, not dropped.
        let wrong = json!({"type": "function",
                           "function": {"name": "nope", "arguments": "{}"}});
        let s =
            score(json!({"prompt": prompt, "tool_calls": [wrong], "answer": gold.answer})).unwrap();
        assert!(s.f1 < 1.0 && s.format_errors == 1, "{s:?}");
        for (line, says) in [
            (
                json!({"prompt": prompt, "answer": "1", "extra": 1}),
                "unknown key \"extra\"",
            ),
            (
                json!({"prompt": prompt, "calls": [], "tool_calls": []}),
                "give one",
            ),
            (
                json!({"messages": [{"role": "user", "content": prompt}], "answer": "1"}),
                "one form",
            ),
            (
                json!({"messages": [{"role": "assistant", "content": "1"}]}),
                "no user message",
            ),
            (
                json!({"messages": [{"role": "user", "content": prompt, "x": 1}]}),
                "unknown key \"x\"",
            ),
            (
                json!({"prompt": prompt, "calls": [{"name": "get", "args": {}}]}),
                "unknown key \"args\"",
            ),
            (
                json!({"prompt": prompt, "tool_calls": [{"type": "code", "function": {"name": "get"}}]}),
                "of type",
            ),
        ] {
            let e = score(line.clone()).unwrap_err();
            assert!(e.contains(says), "{line}: {e}");
        }
    }

    /// A raw Hermes-form completion scores as its calls (read from the `<tool_call>` blocks) or
    /// its answer (read with the chat answer rule); a block that is not a call's JSON is a
    /// format error.
    #[test]
    fn raw_completions_score_by_their_tool_call_blocks_or_their_answer() {
        let task = lookup();
        let item = task.item(Split::Train, 0);
        let prompt = task.prompt(&item);
        let gold = task.gold(&item).unwrap();
        let call = &gold.calls[0];
        let cfg = RewardConfig::default();
        let score = |line: Value| score_line(&task, &cfg, &line.to_string());
        let body = json!({"name": call.name, "arguments": call.arguments}).to_string();
        let calls = score(json!({"prompt": prompt,
            "completion": format!("Let me look.\n<tool_call>\n{body}\n</tool_call>")}))
        .unwrap();
        let plain = score(json!({"prompt": prompt, "calls": [{"name": call.name,
                   "arguments": call.arguments}]}))
        .unwrap();
        assert_eq!(calls, plain);
        assert_eq!((calls.f1, calls.completion), (1.0, 0.0));
        let answered = score(json!({"prompt": prompt,
            "completion": format!("It is {}.", gold.answer)}))
        .unwrap();
        assert_eq!(answered.completion, 1.0);
        let bad = score(json!({"prompt": prompt,
            "completion": format!("<tool_call>{{oops</tool_call><tool_call>{body}</tool_call>")}))
        .unwrap();
        assert_eq!(bad.format_errors, plain.format_errors + 1);
        let e = score(json!({"prompt": prompt, "completion": "1", "answer": "1"})).unwrap_err();
        assert!(e.contains("give one form"), "{e}");
    }
}
