//! BFCL's multi-turn categories: conversations of several user turns with stateful API classes
//! (a file system, a trading bot, …) behind the tools.
//!
//! A task (`bfcl_eval/data/BFCL_v4_multi_turn_<kind>.json`, one per line) holds `question` (per
//! user turn, its messages; a turn held back by `miss_func` is empty), `initial_config` (per
//! class, its scenario), `involved_classes`, and in `miss_func` `missed_function` (turn →
//! the functions first offered at that turn). Its ground truth
//! (`possible_answer/…`, same ids) is per turn the list of calls, in Python form
//! (`mv(source='a', destination='b')`, `sort('a.txt')`), that a correct assistant executes. The
//! functions' documentation is per class in `multi_turn_func_doc/<file>.json`.
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde_json::{Map, Value};

use super::{check_category, field, id_of, read_objects};
use crate::error::{Error, Result};

/// The multi-turn categories (BFCL's own names).
pub const MULTI_CATEGORIES: [&str; 4] = [
    "multi_turn_base",
    "multi_turn_miss_func",
    "multi_turn_miss_param",
    "multi_turn_long_context",
];

/// The API classes of these categories and their documentation files
/// (`bfcl_eval/constants/executable_backend_config.py`).
pub const CLASS_DOCS: [(&str, &str); 8] = [
    ("GorillaFileSystem", "gorilla_file_system.json"),
    ("MathAPI", "math_api.json"),
    ("MessageAPI", "message_api.json"),
    ("TwitterAPI", "posting_api.json"),
    ("TicketAPI", "ticket_api.json"),
    ("TradingBot", "trading_bot.json"),
    ("TravelAPI", "travel_booking.json"),
    ("VehicleControlAPI", "vehicle_control.json"),
];

/// One multi-turn task.
#[derive(Debug, Clone, PartialEq)]
pub struct MultiEntry {
    pub id: String,
    pub category: String,
    /// Per user turn, its messages (empty: the turn where `missed` offers functions again).
    pub turns: Vec<Vec<Value>>,
    /// `{CLASS: scenario}` for every involved class (`{}` where the file gives none).
    pub initial_config: Map<String, Value>,
    /// The classes whose instances the episode holds.
    pub classes: Vec<String>,
    /// Functions held back until a turn: turn index → names (`miss_func`).
    pub missed: BTreeMap<usize, Vec<String>>,
    /// Functions never offered (`excluded_function`).
    pub excluded: Vec<String>,
    /// Per turn, the ground truth's calls in Python form (empty: nothing to do that turn).
    pub ground_truth: Vec<Vec<String>>,
}

impl MultiEntry {
    /// Whether the classes load their long-context scenarios (`multi_turn_long_context`).
    pub fn long_context(&self) -> bool {
        self.category.contains("long_context")
    }

    /// The session configuration that `scripts/pytools.py --bfcl` opens for this task.
    pub fn session_config(&self) -> Value {
        Value::Object(self.initial_config.clone())
    }

    /// The `grade` request of a conversation in which the assistant made `model` (per user
    /// turn, its calls: `{"name", "arguments"}` objects or Python text).
    pub fn grade_request(&self, model: &Value) -> Value {
        serde_json::json!({
            "classes": self.session_config(),
            "long_context": self.long_context(),
            "model": model,
            "gold": self.ground_truth,
        })
    }
}

/// The multi-turn tasks of `category` in BFCL's data directory `dir`, with their ground truth.
pub fn load_multi(dir: &Path, category: &str) -> Result<Vec<MultiEntry>> {
    check_category(category, &MULTI_CATEGORIES, "BFCL multi-turn category")?;
    let answers_path = dir.join(format!("possible_answer/BFCL_v4_{category}.json"));
    let mut answers: HashMap<String, Vec<Vec<String>>> = HashMap::new();
    for (n, o) in read_objects(&answers_path)? {
        let bad = |why: &str| Error::input(format!("{}:{n}: {why}", answers_path.display()));
        let id = id_of(&o).map_err(bad)?;
        let turns: Vec<Vec<String>> = field(&o, "ground_truth")
            .map_err(|_| bad("\"ground_truth\" is not a list of turns of call strings"))?;
        answers.insert(id.to_string(), turns);
    }
    let file = dir.join(format!("BFCL_v4_{category}.json"));
    let known: Vec<&str> = CLASS_DOCS.iter().map(|(c, _)| *c).collect();
    let mut out = Vec::new();
    for (n, o) in read_objects(&file)? {
        let bad = |why: String| Error::input(format!("{}:{n}: {why}", file.display()));
        let id = id_of(&o).map_err(|e| bad(e.into()))?.to_string();
        let ground_truth = answers
            .remove(&id)
            .ok_or_else(|| bad(format!("task {id:?} has no ground truth")))?;
        out.push(entry_of(&o, category, ground_truth, Some(&known)).map_err(bad)?);
    }
    Ok(out)
}

/// Multi-turn tasks of a user's own, one per line of `path` in BFCL's form with the ground truth
/// inline: `{"id", "question": [[messages of turn 1], …], "initial_config": {CLASS: CONFIG},
/// "involved_classes": [CLASS, …], "ground_truth": [[calls of turn 1 in Python form], …]}`,
/// optionally `excluded_function` and `missed_function`; a turn may also be a plain string
/// (the user's message). The classes are whichever the tools' worker serves.
pub fn load_lines(path: &Path) -> Result<Vec<MultiEntry>> {
    let mut out: Vec<MultiEntry> = Vec::new();
    for (n, mut o) in read_objects(path)? {
        let bad = |why: String| Error::input(format!("{}:{n}: {why}", path.display()));
        if let Some(Value::Array(turns)) = o.get_mut("question") {
            for t in turns.iter_mut() {
                if let Value::String(text) = t {
                    *t = serde_json::json!([{"role": "user", "content": text}]);
                }
            }
        }
        let ground_truth: Vec<Vec<String>> = field(&o, "ground_truth")
            .map_err(|_| bad("\"ground_truth\" is not a list of turns of call strings".into()))?;
        let category = o
            .get("category")
            .and_then(Value::as_str)
            .unwrap_or("multi_turn")
            .to_string();
        let entry = entry_of(&o, &category, ground_truth, None).map_err(bad)?;
        if out.iter().any(|e| e.id == entry.id) {
            return Err(bad(format!("a second task with id {:?}", entry.id)));
        }
        out.push(entry);
    }
    if out.is_empty() {
        return Err(Error::input(format!("{}: no tasks", path.display())));
    }
    Ok(out)
}

/// One task from its line `o` and its ground truth; `known`: the classes allowed (all when
/// `None`). The error says what is wrong with the line.
fn entry_of(
    o: &Map<String, Value>,
    category: &str,
    ground_truth: Vec<Vec<String>>,
    known: Option<&[&str]>,
) -> std::result::Result<MultiEntry, String> {
    let id = id_of(o)?.to_string();
    let turns: Vec<Vec<Value>> =
        field(o, "question").map_err(|e| format!("\"question\" is not a list of turns: {e}"))?;
    if turns.is_empty() {
        return Err(format!("task {id:?} has no user turn"));
    }
    let classes: Vec<String> = field(o, "involved_classes")
        .map_err(|_| "\"involved_classes\" is not a list of names".to_string())?;
    if let Some(known) = known {
        if let Some(c) = classes.iter().find(|c| !known.contains(&c.as_str())) {
            return Err(format!("unknown class {c:?} (known: {})", known.join(", ")));
        }
    }
    let given = match o.get("initial_config") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err("\"initial_config\" is not an object".into()),
    };
    let initial_config: Map<String, Value> = classes
        .iter()
        .map(|c| {
            let config = given
                .get(c)
                .cloned()
                .unwrap_or_else(|| Value::Object(Map::new()));
            (c.clone(), config)
        })
        .collect();
    let mut missed = BTreeMap::new();
    if let Some(m) = o.get("missed_function") {
        let m: BTreeMap<String, Vec<String>> = serde_json::from_value(m.clone())
            .map_err(|_| "\"missed_function\" is not {turn: [names]}".to_string())?;
        for (turn, names) in m {
            let t: usize = turn
                .parse()
                .ok()
                .filter(|&t| t < turns.len())
                .ok_or_else(|| format!("\"missed_function\": no turn {turn:?}"))?;
            missed.insert(t, names);
        }
    }
    let excluded: Vec<String> = match o.get("excluded_function") {
        None | Some(Value::Null) => Vec::new(),
        Some(_) => field(o, "excluded_function")
            .map_err(|_| "\"excluded_function\" is not a list of names".to_string())?,
    };
    if ground_truth.len() != turns.len() {
        return Err(format!(
            "task {id:?}: {} user turns but a ground truth of {} turns",
            turns.len(),
            ground_truth.len()
        ));
    }
    Ok(MultiEntry {
        id,
        category: category.to_string(),
        turns,
        initial_config,
        classes,
        missed,
        excluded,
        ground_truth,
    })
}

/// A JSON value as a Python literal (`None`, `True`, strings in double quotes).
pub fn py_literal(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => n.to_string(),
        Value::String(_) => v.to_string(),
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(py_literal).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(o) => format!(
            "{{{}}}",
            o.iter()
                .map(|(k, x)| format!("{}: {}", Value::from(k.as_str()), py_literal(x)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// A call in BFCL's Python form, `name(a='x', n=2)` (keyword arguments, Python literals).
pub fn py_call(name: &str, args: &Value) -> String {
    let args: Vec<String> = args
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", py_literal(v)))
        .collect();
    format!("{name}({})", args.join(", "))
}

/// The documentation of `class`'s functions (`multi_turn_func_doc/<file>.json`), BFCL's
/// dialect, each checked as the single-turn functions are.
pub fn class_functions(dir: &Path, class: &str) -> Result<Vec<Value>> {
    let file = CLASS_DOCS
        .iter()
        .find(|(c, _)| *c == class)
        .map(|(_, f)| *f)
        .ok_or_else(|| Error::input(format!("unknown BFCL class {class:?}")))?;
    let path = dir.join("multi_turn_func_doc").join(file);
    read_objects(&path)?
        .into_iter()
        .map(|(n, o)| {
            let f = Value::Object(o);
            super::check_function(&f)
                .map(|()| f)
                .map_err(|why| Error::input(format!("{}:{n}: {why}", path.display())))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn installed() -> Option<std::path::PathBuf> {
        super::super::data_dir().ok()
    }

    #[test]
    fn the_installed_multi_turn_categories_load_whole() {
        let Some(dir) = installed() else { return };
        for category in MULTI_CATEGORIES {
            let tasks = load_multi(&dir, category).unwrap();
            assert_eq!(tasks.len(), 200, "{category}");
            for t in &tasks {
                assert_eq!(t.turns.len(), t.ground_truth.len());
                assert!(!t.classes.is_empty());
                assert_eq!(t.initial_config.len(), t.classes.len());
            }
            let missed = tasks.iter().filter(|t| !t.missed.is_empty()).count();
            match category {
                "multi_turn_miss_func" => {
                    assert_eq!(missed, 200);
                    // The held-back turn is the empty one.
                    for t in &tasks {
                        for turn in t.missed.keys() {
                            assert!(t.turns[*turn].is_empty(), "{}", t.id);
                        }
                    }
                }
                _ => assert_eq!(missed, 0, "{category}"),
            }
        }
        let first = &load_multi(&dir, "multi_turn_base").unwrap()[0];
        assert_eq!(first.id, "multi_turn_base_0");
        assert_eq!(
            first.ground_truth[0][0], "cd(folder='document')",
            "{:?}",
            first.ground_truth
        );
        for (class, _) in CLASS_DOCS {
            let docs = class_functions(&dir, class).unwrap();
            assert!(docs.len() >= 3, "{class}");
        }
        let names: Vec<String> = class_functions(&dir, "GorillaFileSystem")
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap().to_string())
            .collect();
        assert!(names.contains(&"cd".to_string()) && names.contains(&"mv".to_string()));
    }

    #[test]
    fn calls_are_written_in_python_form() {
        let args =
            serde_json::json!({"a": "it's", "n": 2, "x": 1.5, "f": [true, null], "d": {"k": "v"}});
        assert_eq!(
            py_call("f", &args),
            r#"f(a="it's", n=2, x=1.5, f=[True, None], d={"k": "v"})"#
        );
        assert_eq!(py_call("ls", &serde_json::json!({})), "ls()");
    }

    #[test]
    fn bad_files_name_file_line_and_reason() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::create_dir_all(dir.join("possible_answer")).unwrap();
        let write = |task: &str, answer: &str| {
            std::fs::write(dir.join("BFCL_v4_multi_turn_base.json"), task).unwrap();
            std::fs::write(
                dir.join("possible_answer/BFCL_v4_multi_turn_base.json"),
                answer,
            )
            .unwrap();
        };
        let answer = r#"{"id": "a", "ground_truth": [["ls()"], []]}"#;
        let good = r#"{"id": "a", "question": [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "and?"}]], "initial_config": {}, "involved_classes": ["GorillaFileSystem"]}"#;
        write(good, answer);
        let t = load_multi(dir, "multi_turn_base").unwrap();
        assert_eq!(
            t[0].initial_config["GorillaFileSystem"],
            serde_json::json!({})
        );
        for (task, want) in [
            (
                good.replace("GorillaFileSystem", "Shell"),
                "unknown class \"Shell\"",
            ),
            (good.replace("\"a\"", "\"b\""), "has no ground truth"),
            (
                good.replace(", [{\"role\": \"user\", \"content\": \"and?\"}]", ""),
                "1 user turns but a ground truth of 2",
            ),
            ("{\"id\": ".to_string(), "not JSON"),
        ] {
            write(&task, answer);
            let e = load_multi(dir, "multi_turn_base").unwrap_err().to_string();
            assert!(e.contains("BFCL_v4_multi_turn_base.json:1: "), "{e}");
            assert!(e.contains(want), "{e} lacks {want}");
        }
        assert!(load_multi(dir, "multi_turn_composite")
            .unwrap_err()
            .to_string()
            .contains("not supported"));
    }
}
