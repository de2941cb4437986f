//! Verifiable tool-use tasks (SPEC §3.2): a token [`vocab`], the episode [`protocol`], and the
//! task families with their tools ([`tasks`]). Episodes render to the JSON form external models
//! produce, and such JSON lines can be scored with the same rewards ([`score_jsonl`]).
pub mod protocol;
pub mod tasks;
pub mod vocab;

use std::collections::BTreeMap;
use std::io::BufRead;

use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::reward::{self, canonical_value, Attempt, Call, RewardConfig, Score, ScoreMeans};
use protocol::Episode;
use tasks::Task;

/// An episode in the common JSON function-call form.
pub fn episode_json(task: &Task, ep: &Episode) -> Value {
    let calls: Vec<Value> = ep.attempt.calls.iter().map(call_json).collect();
    json!({
        "prompt": task.prompt(&ep.item),
        "calls": calls,
        "results": ep.attempt.results,
        "answer": ep.attempt.answer,
    })
}

fn call_json(call: &Call) -> Value {
    let args: Map<String, Value> = call
        .arguments
        .iter()
        .map(|(k, v)| {
            let value = v
                .parse::<i64>()
                .map(Value::from)
                .unwrap_or_else(|_| Value::from(v.clone()));
            (k.clone(), value)
        })
        .collect();
    json!({ "name": call.name, "arguments": args })
}

/// Reads a call from `{"name": …, "arguments": {…}}` (arguments may also be a JSON string, as
/// some APIs send them).
fn parse_call_json(v: &Value) -> Result<Call, String> {
    let name = v
        .get("name")
        .and_then(Value::as_str)
        .ok_or("a call needs a string \"name\"")?;
    let args = match v.get("arguments") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(m)) => m,
            _ => return Err("\"arguments\" is a string that is not a JSON object".into()),
        },
        Some(_) => return Err("\"arguments\" must be an object".into()),
    };
    let mut arguments = BTreeMap::new();
    for (k, v) in args {
        let text = match v {
            Value::String(s) => s,
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            other => return Err(format!("argument {k:?} has a non-scalar value {other}")),
        };
        arguments.insert(k, canonical_value(&text));
    }
    Ok(Call {
        name: name.to_string(),
        arguments,
    })
}

/// Scores one JSON line: the prompt names the item, the calls are re-executed with the task's
/// tools (so results need not be given), the answer is compared exactly.
pub fn score_line(task: &Task, cfg: &RewardConfig, line: &str) -> Result<Score, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let prompt = v
        .get("prompt")
        .and_then(Value::as_str)
        .ok_or("missing string \"prompt\"")?;
    let item = task
        .parse_prompt(prompt)
        .ok_or_else(|| format!("not a {:?} prompt: {prompt:?}", task.spec.kind))?;
    let gold = task.gold(&item).ok_or(
        "the task has no answer for this prompt (an unknown entity or invalid arithmetic)",
    )?;
    let calls = match v.get("calls") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(parse_call_json)
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err("\"calls\" must be an array".into()),
    };
    let answer = match v.get("answer") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(_) => return Err("\"answer\" must be a string or a number".into()),
    };
    let results: Vec<Option<String>> = calls.iter().map(|c| task.execute(&item, c).ok()).collect();
    let format_errors =
        results.iter().filter(|r| r.is_none()).count() as u32 + u32::from(answer.is_none());
    let attempt = Attempt {
        calls,
        results,
        answer,
        format_errors,
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

/// Scores every line of `input`, calling `each` with (line number, result); bad lines are
/// reported and skipped. Returns the means over the scored lines.
pub fn score_jsonl(
    task: &Task,
    cfg: &RewardConfig,
    input: impl BufRead,
    mut each: impl FnMut(usize, &Result<Score, String>),
) -> std::io::Result<ScoreTotals> {
    let mut t = ScoreTotals::default();
    for (i, line) in input.split(b'\n').enumerate() {
        let bytes = line?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        t.lines += 1;
        let result = match std::str::from_utf8(&bytes) {
            Ok(text) => score_line(task, cfg, text),
            Err(_) => Err("not valid UTF-8".to_string()),
        };
        each(i + 1, &result);
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
    use tasks::{Split, TaskKind, TaskSpec};

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
        let limits = protocol::Limits {
            max_tokens: 64,
            max_calls: 4,
        };
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
        let totals = score_jsonl(&task, &RewardConfig::default(), input.as_slice(), |n, r| {
            seen.push((n, r.is_ok()))
        })
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
}
