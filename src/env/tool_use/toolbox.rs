//! The tools of `[[tools]]` put to work: their specs as offered to the policy, the built-in
//! implementations, and one [`ToolWorker`] per external program. A clone of a toolbox starts its
//! own workers (each actor owns its clone, so each actor has its own processes); a worker starts
//! on its first call and stops when its toolbox is dropped.
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::external::ToolWorker;
use super::reward::Call;
use crate::env::ToolSpec;

/// The built-in implementations a `[[tools]]` entry may name.
pub const BUILTINS: [&str; 4] = ["add", "sub", "mul", "div"];

/// One tool offered to the policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolConfig {
    /// The name the policy calls it by.
    pub name: String,
    /// What it does, shown to the policy with its parameters.
    #[serde(default)]
    pub description: String,
    /// JSON schema of its arguments: an object schema with `properties`.
    pub parameters: serde_json::Value,
    /// A built-in implementation (`add`, `sub`, `mul`, `div`: integer arithmetic on `a`, `b`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builtin: Option<String>,
    /// Or a program and its arguments, e.g. `["python3", "tools/geo.py"]`: one worker process
    /// per actor, JSON lines on stdin and stdout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Longest wait for one answer of an external tool, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_timeout_ms() -> u64 {
    10_000
}

/// The configured tools.
pub struct ToolBox {
    tools: Arc<[ToolConfig]>,
    /// One slot per tool: a worker for an external program, `None` for a built-in.
    workers: Vec<Option<Mutex<ToolWorker>>>,
    stderr_log: Option<PathBuf>,
}

impl std::fmt::Debug for ToolBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.tools.iter().map(|t| t.name.as_str()).collect();
        f.debug_struct("ToolBox").field("tools", &names).finish()
    }
}

impl Clone for ToolBox {
    /// The same tools with workers of its own (not started yet).
    fn clone(&self) -> Self {
        ToolBox::new(self.tools.clone(), self.stderr_log.clone())
    }
}

impl ToolBox {
    /// `tools` (validated by the config); external workers' stderr is appended to `stderr_log`.
    pub fn new(tools: Arc<[ToolConfig]>, stderr_log: Option<PathBuf>) -> Self {
        let workers = tools
            .iter()
            .map(|t| {
                t.command.as_ref().map(|command| {
                    Mutex::new(ToolWorker::new(
                        command.clone(),
                        Duration::from_millis(t.timeout_ms),
                        stderr_log.clone(),
                    ))
                })
            })
            .collect();
        ToolBox {
            tools,
            workers,
            stderr_log,
        }
    }

    /// The tools' names, in config order.
    pub fn names(&self) -> Vec<&str> {
        self.tools.iter().map(|t| t.name.as_str()).collect()
    }

    /// The tool called `name` as offered to the policy.
    pub fn spec(&self, name: &str) -> Option<ToolSpec> {
        let t = self.tools.iter().find(|t| t.name == name)?;
        Some(ToolSpec {
            name: t.name.clone(),
            description: t.description.clone(),
            parameters: t.parameters.clone(),
        })
    }

    /// Runs `calls` in order: each one's result or error text. The calls to one external program
    /// go to its worker together.
    pub fn execute_many(&self, calls: &[Call]) -> Vec<Result<String, String>> {
        let mut out: Vec<Option<Result<String, String>>> = vec![None; calls.len()];
        for (i, call) in calls.iter().enumerate() {
            let Some(t) = self.tools.iter().position(|t| t.name == call.name) else {
                out[i] = Some(Err(format!("unknown tool {:?}", call.name)));
                continue;
            };
            if let Some(b) = &self.tools[t].builtin {
                out[i] = Some(builtin(b, call));
            }
        }
        for (t, worker) in self.workers.iter().enumerate() {
            let Some(worker) = worker else { continue };
            let mine: Vec<usize> = (0..calls.len())
                .filter(|&i| out[i].is_none() && calls[i].name == self.tools[t].name)
                .collect();
            if mine.is_empty() {
                continue;
            }
            let args: Vec<Value> = mine
                .iter()
                .map(|&i| typed_arguments(&calls[i], &self.tools[t].parameters))
                .collect();
            let batch: Vec<(&str, &Value)> = mine
                .iter()
                .zip(&args)
                .map(|(&i, a)| (calls[i].name.as_str(), a))
                .collect();
            let results = match worker.lock() {
                Ok(mut w) => w.call_batch(&batch),
                Err(_) => vec![Err("the tool's worker is unusable".to_string()); batch.len()],
            };
            for (&i, r) in mine.iter().zip(results) {
                out[i] = Some(r);
            }
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err("no implementation".into())))
            .collect()
    }

    /// Batches of calls sent to the external programs so far.
    pub fn exchanges(&self) -> u64 {
        self.workers
            .iter()
            .flatten()
            .map(|w| w.lock().map_or(0, |w| w.exchanges))
            .sum()
    }

    /// Runs one call.
    pub fn execute(&self, call: &Call) -> Result<String, String> {
        self.execute_many(std::slice::from_ref(call))
            .pop()
            .unwrap_or_else(|| Err("no result".into()))
    }
}

/// A call's arguments as JSON typed by the tool's schema: `integer` and `number` properties as
/// numbers, `boolean` as booleans (read from their canonical text), everything else as the text
/// the policy wrote.
fn typed_arguments(call: &Call, schema: &Value) -> Value {
    let mut args = Map::new();
    for (name, canonical) in &call.arguments {
        let kind = schema["properties"][name.as_str()]["type"].as_str();
        let v = match kind {
            Some("integer") => canonical.parse::<i64>().map(Value::from).ok(),
            Some("number") => canonical
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map(Value::Number),
            Some("boolean") => canonical.parse::<bool>().map(Value::Bool).ok(),
            _ => None,
        };
        let text = || Value::String(call.value(name).unwrap_or(canonical).to_string());
        args.insert(name.clone(), v.unwrap_or_else(text));
    }
    Value::Object(args)
}

/// The built-in integer arithmetic on arguments `a` and `b`.
fn builtin(name: &str, call: &Call) -> Result<String, String> {
    let arg = |k: &str| -> Result<i64, String> {
        call.arguments
            .get(k)
            .ok_or_else(|| format!("{} needs argument {k:?}", call.name))?
            .parse::<i64>()
            .map_err(|_| format!("argument {k:?} of {} must be an integer", call.name))
    };
    let (a, b) = (arg("a")?, arg("b")?);
    let overflow = || "integer overflow".to_string();
    let v = match name {
        "add" => a.checked_add(b).ok_or_else(overflow)?,
        "sub" => a.checked_sub(b).ok_or_else(overflow)?,
        "mul" => a.checked_mul(b).ok_or_else(overflow)?,
        "div" if b == 0 => return Err("division by zero".into()),
        "div" if a % b != 0 => return Err(format!("{a} is not divisible by {b}")),
        "div" => a / b,
        other => return Err(format!("no built-in tool {other:?}")),
    };
    Ok(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tools(dir: &std::path::Path) -> Arc<[ToolConfig]> {
        let script = dir.join("shout.py");
        std::fs::write(
            &script,
            "import json, sys\nfor l in sys.stdin:\n    r = json.loads(l)\n    a = r['arguments']\n    print(json.dumps({'id': r['id'], 'result': a['text'].upper() * a['times']}), flush=True)\n",
        )
        .unwrap();
        let object = |props: Value| json!({"type": "object", "properties": props});
        vec![
            ToolConfig {
                name: "plus".into(),
                description: "a + b".into(),
                parameters: object(json!({"a": {"type": "integer"}, "b": {"type": "integer"}})),
                builtin: Some("add".into()),
                command: None,
                timeout_ms: 1000,
            },
            ToolConfig {
                name: "shout".into(),
                description: "text in capitals, repeated".into(),
                parameters: object(
                    json!({"text": {"type": "string"}, "times": {"type": "integer"}}),
                ),
                builtin: None,
                command: Some(vec!["python3".into(), script.display().to_string()]),
                timeout_ms: 20_000,
            },
        ]
        .into()
    }

    /// Calls compare case-insensitively, but a tool gets the text as the policy wrote it.
    #[test]
    fn a_tool_receives_string_arguments_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("echo.py");
        std::fs::write(
            &script,
            "import json, sys\nfor l in sys.stdin:\n    r = json.loads(l)\n    print(json.dumps({'id': r['id'], 'result': r['arguments']['city']}), flush=True)\n",
        )
        .unwrap();
        let echo = ToolConfig {
            name: "echo".into(),
            description: "the city".into(),
            parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}}),
            builtin: None,
            command: Some(vec!["python3".into(), script.display().to_string()]),
            timeout_ms: 20_000,
        };
        let tb = ToolBox::new(vec![echo].into(), None);
        let call = crate::env::tool_use::calls::parse_call_json(
            &json!({"name": "echo", "arguments": {"city": " New York "}}),
        )
        .unwrap();
        assert_eq!(call, Call::new("echo", &[("city", "new york")]));
        assert_eq!(tb.execute(&call), Ok("New York".to_string()));
        assert_eq!(
            tb.execute(&Call::new("echo", &[("city", "Paris")])),
            Ok("Paris".to_string())
        );
    }

    #[test]
    fn built_in_and_external_tools_answer_in_call_order() {
        let dir = tempfile::tempdir().unwrap();
        let tb = ToolBox::new(tools(dir.path()), None);
        assert_eq!(tb.names(), vec!["plus", "shout"]);
        assert_eq!(
            tb.spec("shout").unwrap().description,
            "text in capitals, repeated"
        );
        let calls = [
            Call::new("shout", &[("text", "hi"), ("times", "2")]),
            Call::new("plus", &[("a", "2"), ("b", "40")]),
            Call::new("nope", &[]),
            Call::new("shout", &[("text", "42"), ("times", "1")]),
            Call::new("plus", &[("a", "x"), ("b", "1")]),
        ];
        let got = tb.execute_many(&calls);
        assert_eq!(got[0], Ok("HIHI".to_string()));
        assert_eq!(got[1], Ok("42".to_string()));
        assert_eq!(got[2], Err("unknown tool \"nope\"".to_string()));
        // "42" stays a string: the schema says so.
        assert_eq!(got[3], Ok("42".to_string()));
        assert!(got[4].as_ref().unwrap_err().contains("must be an integer"));
        // A clone has workers of its own.
        let other = tb.clone();
        assert_eq!(
            other.execute(&Call::new("shout", &[("text", "a"), ("times", "3")])),
            Ok("AAA".to_string())
        );
    }

    #[test]
    fn built_ins_do_integer_arithmetic_and_say_what_is_wrong() {
        let c = |a: &str, b: &str| Call::new("t", &[("a", a), ("b", b)]);
        assert_eq!(builtin("sub", &c("2", "5")), Ok("-3".into()));
        assert_eq!(builtin("mul", &c("-4", "5")), Ok("-20".into()));
        assert_eq!(builtin("div", &c("20", "5")), Ok("4".into()));
        assert!(builtin("div", &c("7", "2"))
            .unwrap_err()
            .contains("not divisible"));
        assert!(builtin("div", &c("7", "0")).unwrap_err().contains("zero"));
        assert!(builtin("add", &c(&i64::MAX.to_string(), "1"))
            .unwrap_err()
            .contains("overflow"));
        assert!(builtin("add", &Call::new("t", &[("a", "1")]))
            .unwrap_err()
            .contains("needs argument \"b\""));
    }
}
