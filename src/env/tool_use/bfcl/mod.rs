//! The Berkeley Function Calling Leaderboard (BFCL v4, PyPI `bfcl-eval`): its single-turn
//! categories as tasks that bring their own tools, and its AST checker ([`check`]).
//!
//! A category's file (`bfcl_eval/data/BFCL_v4_<category>.json`) holds one task per line: `id`,
//! `question` (turns of OpenAI messages) and `function` (the tools offered, BFCL's JSON-schema
//! dialect: `"type": "dict"`, types `string integer float boolean array tuple dict any`);
//! `possible_answer/BFCL_v4_<category>.json` holds each task's `ground_truth`: per expected call,
//! per parameter, the acceptable values (`""` among them: the parameter may be left out). The
//! irrelevance categories have no answer: no call is right.
pub mod check;
pub mod multi;
pub mod source;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::env::Split;
use crate::error::{Error, Result};
use crate::formats::lines::{capped_lines, Line};

/// The single-turn categories, non-live then live (BFCL's own names).
pub const CATEGORIES: [&str; 10] = [
    "simple_python",
    "multiple",
    "parallel",
    "parallel_multiple",
    "irrelevance",
    "live_simple",
    "live_multiple",
    "live_parallel",
    "live_parallel_multiple",
    "live_irrelevance",
];

/// One BFCL task.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub id: String,
    pub category: String,
    /// The conversation's turns, each a list of OpenAI messages (single-turn tasks: one).
    pub question: Vec<Vec<Value>>,
    /// The functions offered, as BFCL documents them.
    pub functions: Vec<Value>,
    /// The ground truth: one `{name: {param: [acceptable values]}}` per expected call (none for
    /// the irrelevance categories).
    pub answers: Vec<Map<String, Value>>,
}

impl Entry {
    /// Which checker grades this task.
    pub fn checker(&self) -> check::Checker {
        check::Checker::of_category(&self.category)
    }
}

/// BFCL's data directory in the project's `.venv` (set-up installs `bfcl-eval` there).
pub fn data_dir() -> Result<PathBuf> {
    crate::formats::venv::package_file("bfcl_eval", "data").ok_or_else(|| {
        Error::input(
            "BFCL's data is not installed (scripts/setup.sh installs bfcl-eval into .venv)",
        )
    })
}

/// The longest line a BFCL file may have (its longest task is a few hundred kilobytes).
const MAX_LINE: usize = 16 << 20;

/// The JSON objects of a JSON-lines file, each with its line number; a bad line is an error
/// naming the file and the line.
fn read_objects(path: &Path) -> Result<Vec<(usize, Map<String, Value>)>> {
    let file = std::fs::File::open(path)
        .map_err(|e| Error::input(format!("cannot read {}: {e}", path.display())))?;
    let lines: Vec<Line> = capped_lines(std::io::BufReader::new(file), MAX_LINE)
        .collect::<std::io::Result<_>>()
        .map_err(|e| Error::input(format!("{}: {e}", path.display())))?;
    let mut out = Vec::new();
    for (n, text) in lines {
        let bad = |why: String| Error::input(format!("{}:{n}: {why}", path.display()));
        let text = text.map_err(bad)?;
        if text.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(o)) => out.push((n, o)),
            Ok(_) => return Err(bad("not a JSON object".into())),
            Err(e) => return Err(bad(format!("not JSON: {e}"))),
        }
    }
    Ok(out)
}

/// The types a function's parameters may have in BFCL's dialect.
const TYPES: [&str; 8] = [
    "string", "integer", "float", "boolean", "array", "tuple", "dict", "any",
];

/// Checks a function's documentation: a name, and parameters whose types BFCL knows.
fn check_function(f: &Value) -> std::result::Result<(), String> {
    let name = f["name"]
        .as_str()
        .ok_or("a function without a string \"name\"")?;
    let Some(props) = f["parameters"]["properties"].as_object() else {
        return Ok(());
    };
    for (param, detail) in props {
        let ty = detail["type"].as_str().unwrap_or("(none)");
        if !TYPES.contains(&ty) {
            return Err(format!(
                "function {name:?}: parameter {param:?} has the unknown type {ty:?} (known: {})",
                TYPES.join(", ")
            ));
        }
    }
    Ok(())
}

/// Checks that `category` is one of `supported` (`what`: the kind of category, for the message).
fn check_category(category: &str, supported: &[&str], what: &str) -> Result<()> {
    if supported.contains(&category) {
        return Ok(());
    }
    Err(Error::input(format!(
        "{what} {category:?} is not supported (supported: {})",
        supported.join(", ")
    )))
}

/// A task line's string `id`.
fn id_of(o: &Map<String, Value>) -> std::result::Result<&str, &'static str> {
    o.get("id")
        .and_then(Value::as_str)
        .ok_or("no string \"id\"")
}

/// A task line's field `key` read as `T` (an absent one read as null).
fn field<T: serde::de::DeserializeOwned>(
    o: &Map<String, Value>,
    key: &str,
) -> std::result::Result<T, serde_json::Error> {
    serde_json::from_value(o.get(key).cloned().unwrap_or(Value::Null))
}

/// The tasks of `category` in BFCL's data directory `dir`, with their ground truth.
pub fn load(dir: &Path, category: &str) -> Result<Vec<Entry>> {
    check_category(category, &CATEGORIES, "BFCL category")?;
    let file = dir.join(format!("BFCL_v4_{category}.json"));
    let mut answers: HashMap<String, Vec<Map<String, Value>>> = HashMap::new();
    if !category.contains("irrelevance") {
        let path = dir.join(format!("possible_answer/BFCL_v4_{category}.json"));
        for (n, o) in read_objects(&path)? {
            let bad = |why: &str| Error::input(format!("{}:{n}: {why}", path.display()));
            let id = id_of(&o).map_err(bad)?;
            let calls = o
                .get("ground_truth")
                .and_then(Value::as_array)
                .ok_or_else(|| bad("no \"ground_truth\" list"))?
                .iter()
                .map(|c| c.as_object().cloned().filter(|m| m.len() == 1))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad("a ground-truth call is not {name: {parameters}}"))?;
            answers.insert(id.to_string(), calls);
        }
    }
    let mut out = Vec::new();
    for (n, o) in read_objects(&file)? {
        let bad = |why: String| Error::input(format!("{}:{n}: {why}", file.display()));
        let id = id_of(&o).map_err(|e| bad(e.into()))?.to_string();
        let question: Vec<Vec<Value>> = field(&o, "question").map_err(|e| {
            bad(format!(
                "\"question\" is not a list of turns of messages: {e}"
            ))
        })?;
        let functions = o
            .get("function")
            .and_then(Value::as_array)
            .cloned()
            .ok_or_else(|| bad("no \"function\" list".into()))?;
        for f in &functions {
            check_function(f).map_err(bad)?;
        }
        let answers = match category.contains("irrelevance") {
            true => Vec::new(),
            false => answers
                .remove(&id)
                .ok_or_else(|| bad(format!("task {id:?} has no ground truth")))?,
        };
        out.push(Entry {
            id,
            category: category.to_string(),
            question,
            functions,
            answers,
        });
    }
    Ok(out)
}

/// FNV-1a (64 bits) of an id's bytes: the same on every machine.
pub fn id_hash(id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The split of a task, fixed by its id on every machine: [`id_hash`] in ten buckets (the
/// hash modulo 10), 0–6 train and 7–9 held out (about 70/30).
pub fn split_of(id: &str) -> Split {
    if id_hash(id) % 10 < 7 {
        Split::Train
    } else {
        Split::Heldout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_split_is_fixed_by_the_id_and_about_70_30() {
        // FNV-1a's published test vector: "a" → 0xaf63dc4c8601ec8c.
        assert_eq!(
            split_of("a"),
            if 0xaf63_dc4c_8601_ec8cu64 % 10 < 7 {
                Split::Train
            } else {
                Split::Heldout
            }
        );
        let ids: Vec<String> = (0..10_000).map(|i| format!("simple_python_{i}")).collect();
        let train = ids.iter().filter(|id| split_of(id) == Split::Train).count();
        assert!((6_700..7_300).contains(&train), "{train}");
    }

    #[test]
    fn bad_files_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("possible_answer")).unwrap();
        let task = r#"{"id": "multiple_0", "question": [[{"role": "user", "content": "hi"}]], "function": [{"name": "f", "parameters": {"type": "dict", "properties": {"x": {"type": "integer"}}}}]}"#;
        let answer = r#"{"id": "multiple_0", "ground_truth": [{"f": {"x": [1]}}]}"#;
        std::fs::write(d.join("possible_answer/BFCL_v4_multiple.json"), answer).unwrap();
        std::fs::write(d.join("BFCL_v4_multiple.json"), format!("{task}\n")).unwrap();
        let e = load(d, "multiple").unwrap();
        assert_eq!(e[0].answers[0]["f"]["x"], serde_json::json!([1]));
        std::fs::write(d.join("BFCL_v4_multiple.json"), format!("{task}\n{{oops\n")).unwrap();
        let err = load(d, "multiple").unwrap_err().to_string();
        assert!(err.contains("BFCL_v4_multiple.json:2: not JSON"), "{err}");
        let odd = task.replace("\"integer\"", "\"quaternion\"");
        std::fs::write(d.join("BFCL_v4_multiple.json"), odd).unwrap();
        let err = load(d, "multiple").unwrap_err().to_string();
        assert!(
            err.contains(":1: function \"f\": parameter \"x\" has the unknown type \"quaternion\""),
            "{err}"
        );
        assert!(load(d, "simple_java")
            .unwrap_err()
            .to_string()
            .contains("not supported"));
    }
}
