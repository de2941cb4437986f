//! BFCL's single-turn tasks as a task source: each task brings its own tools (BFCL's function
//! documentation read as JSON schemas), its own opening messages, and a calls rule for its
//! gold. The tools are call-only: the calls the assistant writes in its turn are graded by
//! BFCL's AST checker ([`super::check`]), never run.
use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::check::CallsRule;
use super::{split_of, Entry};
use crate::env::tool_use::calls::call_of;
use crate::env::tool_use::reward::{AnswerRule, Call, Gold};
use crate::env::{
    NoDemonstration, Protocol, ProtocolEpisode, Split, TaskSource, ToolSet, ToolSpec,
};

/// `schema` with its `type`s renamed by `rename` (given `None` where a schema has no type; a
/// `None` back leaves the type out) down through `properties`, `items` and
/// `additionalProperties`; every other key (descriptions, `enum`, `default`, `required`) kept
/// as it is.
fn retyped(schema: &Value, rename: &dyn Fn(Option<&str>) -> Option<String>) -> Value {
    let Value::Object(o) = schema else {
        return schema.clone();
    };
    let mut out = Map::new();
    for (key, value) in o {
        let v = match (key.as_str(), value) {
            ("type", Value::String(ty)) => match rename(Some(ty)) {
                Some(t) => Value::from(t),
                None => continue,
            },
            ("properties", Value::Object(props)) => Value::Object(
                props
                    .iter()
                    .map(|(name, p)| (name.clone(), retyped(p, rename)))
                    .collect(),
            ),
            ("items" | "additionalProperties", Value::Object(_)) => retyped(value, rename),
            _ => value.clone(),
        };
        out.insert(key.clone(), v);
    }
    if !o.contains_key("type") {
        if let Some(t) = rename(None) {
            out.insert("type".into(), Value::from(t));
        }
    }
    Value::Object(out)
}

/// A BFCL parameter documentation (or a whole `parameters` object) as a JSON schema: `dict` an
/// object, `float` a number, `tuple` an array; `any` constrains nothing (its `type` is dropped).
/// The other types are JSON schema's own.
pub fn json_schema(bfcl: &Value) -> Value {
    retyped(bfcl, &|ty| {
        Some(
            match ty? {
                "dict" => "object",
                "float" => "number",
                "tuple" => "array",
                "any" => return None,
                other => other,
            }
            .to_string(),
        )
    })
}

/// A JSON schema in BFCL's dialect, as its checker reads types: `object` a `dict`, `number` a
/// `float`, no type `any`.
pub fn bfcl_schema(schema: &Value) -> Value {
    retyped(schema, &|ty| {
        Some(
            match ty {
                Some("object") => "dict",
                Some("number") => "float",
                Some(other) => other,
                None => "any",
            }
            .to_string(),
        )
    })
}

/// A tool's JSON schema as BFCL documents a function (what its checker reads).
pub fn bfcl_function(spec: &ToolSpec) -> Value {
    serde_json::json!({
        "name": spec.name,
        "description": spec.description,
        "parameters": bfcl_schema(&spec.parameters),
    })
}

/// A BFCL function's documentation as a [`ToolSpec`].
pub fn tool_spec(function: &Value) -> ToolSpec {
    ToolSpec {
        name: function["name"].as_str().unwrap_or_default().to_string(),
        description: function["description"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        parameters: json_schema(&function["parameters"]),
    }
}

/// One task, ready to play: its entry, its tools as schemas, its calls rule and gold calls.
#[derive(Debug)]
pub struct BfclTask {
    pub entry: Entry,
    pub tools: Vec<ToolSpec>,
    pub rule: Arc<CallsRule>,
    /// The first acceptable value of every parameter, as calls.
    pub gold_calls: Vec<Call>,
}

impl BfclTask {
    pub fn new(entry: Entry) -> Self {
        let tools = entry.functions.iter().map(tool_spec).collect();
        let rule = CallsRule {
            checker: entry.checker(),
            functions: entry.functions.clone(),
            answers: entry.answers.clone(),
        };
        let gold_calls = rule
            .first_acceptable()
            .iter()
            .map(|(name, args)| call_of(name, args))
            .collect();
        BfclTask {
            entry,
            tools,
            rule: Arc::new(rule),
            gold_calls,
        }
    }
}

#[derive(Debug, Default)]
struct Tasks {
    train: Vec<BfclTask>,
    heldout: Vec<BfclTask>,
    by_id: HashMap<String, (Split, usize)>,
}

impl Tasks {
    fn split(&self, split: Split) -> &[BfclTask] {
        match split {
            Split::Train => &self.train,
            Split::Heldout => &self.heldout,
        }
    }
}

/// BFCL tasks as a task source, in two splits; cheap to clone (the tasks are shared).
#[derive(Debug, Clone)]
pub struct BfclSource {
    tasks: Arc<Tasks>,
    seed: u64,
}

/// A task of a [`BfclSource`]: its split and index there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BfclRef {
    pub split: Split,
    pub index: usize,
}

impl BfclSource {
    /// `entries` in the fixed split of their ids ([`split_of`]); `seed` picks the actors'
    /// training tasks.
    pub fn new(entries: Vec<Entry>, seed: u64) -> Self {
        let (train, heldout): (Vec<Entry>, Vec<Entry>) = entries
            .into_iter()
            .partition(|e| split_of(&e.id) == Split::Train);
        Self::from_splits(train, heldout, seed)
    }

    /// The tasks of each split as given, the categories interleaved (one task of each in
    /// turn, each category's tasks in their order) so that the first items of a split, which
    /// evaluation plays, cover every category.
    pub fn from_splits(train: Vec<Entry>, heldout: Vec<Entry>, seed: u64) -> Self {
        let tasks = |entries: Vec<Entry>| -> Vec<BfclTask> {
            interleaved(entries)
                .into_iter()
                .map(BfclTask::new)
                .collect()
        };
        let mut tasks = Tasks {
            train: tasks(train),
            heldout: tasks(heldout),
            by_id: HashMap::new(),
        };
        tasks.by_id = [Split::Train, Split::Heldout]
            .into_iter()
            .flat_map(|split| {
                let list = tasks.split(split);
                list.iter()
                    .enumerate()
                    .map(move |(i, t)| (t.entry.id.clone(), (split, i)))
            })
            .collect();
        BfclSource {
            tasks: Arc::new(tasks),
            seed,
        }
    }

    /// The tasks of `split`, or of the other split when this one is empty.
    fn list(&self, split: Split) -> (Split, &[BfclTask]) {
        let (t, h) = (&self.tasks.train, &self.tasks.heldout);
        match split {
            Split::Train if !t.is_empty() => (Split::Train, t),
            Split::Heldout if !h.is_empty() => (Split::Heldout, h),
            _ if t.is_empty() => (Split::Heldout, h),
            _ => (Split::Train, t),
        }
    }

    /// The task `item` points at.
    pub fn task(&self, item: &BfclRef) -> &BfclTask {
        let (_, list) = self.list(item.split);
        &list[item.index % list.len()]
    }

    /// Tasks in `split` (not falling back on the other split).
    pub fn len(&self, split: Split) -> usize {
        self.tasks.split(split).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len(Split::Train) + self.len(Split::Heldout) == 0
    }

    /// The source without the tasks that cannot be played within `max_tokens`: those whose
    /// demonstration (prompt and gold calls) is longer, or whose prompt alone is when the task
    /// has no demonstration. Returns the source kept and, per category, how many were dropped.
    pub fn fitting<R: Protocol<BfclSource>>(
        &self,
        protocol: &R,
        max_tokens: usize,
    ) -> (BfclSource, Vec<(String, usize)>) {
        use rayon::prelude::*;
        let fits = |split: Split| -> Vec<bool> {
            (0..self.len(split))
                .into_par_iter()
                .map(|index| {
                    let item = BfclRef { split, index };
                    match protocol.demonstration(self, &item) {
                        Ok(d) => d.tokens.len() <= max_tokens,
                        Err(NoDemonstration::TooLong) => false,
                        Err(_) => protocol
                            .start(self, item)
                            .is_ok_and(|ep| ep.prompt_len() < max_tokens),
                    }
                })
                .collect()
        };
        let mut dropped: Vec<(String, usize)> = Vec::new();
        let mut keep = |split: Split| -> Vec<Entry> {
            self.tasks
                .split(split)
                .iter()
                .zip(fits(split))
                .filter_map(|(t, ok)| {
                    if !ok {
                        let c = &t.entry.category;
                        match dropped.iter_mut().find(|(name, _)| name == c) {
                            Some((_, n)) => *n += 1,
                            None => dropped.push((c.clone(), 1)),
                        }
                    }
                    ok.then(|| t.entry.clone())
                })
                .collect()
        };
        let (train, heldout) = (keep(Split::Train), keep(Split::Heldout));
        (Self::from_splits(train, heldout, self.seed), dropped)
    }
}

/// `entries` with their categories taken in turn (categories in order of first appearance).
fn interleaved(entries: Vec<Entry>) -> Vec<Entry> {
    let mut groups: Vec<std::collections::VecDeque<Entry>> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for e in entries {
        match names.iter().position(|n| n == &e.category) {
            Some(i) => groups[i].push_back(e),
            None => {
                names.push(e.category.clone());
                groups.push(std::collections::VecDeque::from([e]));
            }
        }
    }
    let mut out = Vec::new();
    while groups.iter().any(|g| !g.is_empty()) {
        out.extend(groups.iter_mut().filter_map(|g| g.pop_front()));
    }
    out
}

impl TaskSource for BfclSource {
    type Item = BfclRef;

    /// A training task drawn uniformly from the prompt's own stream.
    fn prompt_item(&self, id: &crate::ids::PromptId) -> BfclRef {
        use rand::Rng;
        let (split, list) = self.list(Split::Train);
        BfclRef {
            split,
            index: id.item_stream(self.seed).gen_range(0..list.len().max(1)),
        }
    }

    /// Task `index` of `split`, cycling.
    fn item(&self, split: Split, index: u64) -> BfclRef {
        let (split, list) = self.list(split);
        BfclRef {
            split,
            index: (index % list.len().max(1) as u64) as usize,
        }
    }

    /// The last user message of the task's turn.
    fn prompt(&self, item: &BfclRef) -> String {
        let turn = self.task(item).entry.question.first();
        turn.into_iter()
            .flatten()
            .rev()
            .find(|m| m["role"] == "user")
            .and_then(|m| m["content"].as_str())
            .unwrap_or_default()
            .to_string()
    }

    fn tools(&self, item: &BfclRef) -> Vec<ToolSpec> {
        self.task(item).tools.clone()
    }

    fn gold(&self, item: &BfclRef) -> Option<Gold> {
        let t = self.task(item);
        Some(Gold {
            calls: t.gold_calls.clone(),
            rule: AnswerRule::Calls(t.rule.clone()),
            answer: String::new(),
            needed: Vec::new(),
        })
    }

    fn name(&self) -> String {
        "bfcl".into()
    }

    fn split_len(&self, split: Split) -> Option<usize> {
        Some(self.list(split).1.len())
    }

    /// The task of the line's `id`.
    fn locate(&self, id: Option<&Value>, _prompt: &str) -> Result<BfclRef, String> {
        let id = id
            .and_then(Value::as_str)
            .ok_or("a BFCL line needs its task's string \"id\"")?;
        let &(split, index) = self
            .tasks
            .by_id
            .get(id)
            .ok_or_else(|| format!("no BFCL task {id:?} among the categories loaded"))?;
        Ok(BfclRef { split, index })
    }

    fn call_only(&self, _item: &BfclRef) -> bool {
        true
    }

    /// The task's first turn as it ships (a system message of its own kept).
    fn messages(&self, item: &BfclRef) -> Option<Vec<Value>> {
        self.task(item).entry.question.first().cloned()
    }

    fn item_id(&self, item: &BfclRef) -> Option<String> {
        Some(self.task(item).entry.id.clone())
    }
}

impl ToolSet<BfclRef> for BfclSource {
    /// BFCL's tools have no implementation; a call-only episode never asks for one.
    fn execute(&self, _item: &BfclRef, call: &Call) -> Result<String, String> {
        Err(format!(
            "{} is call-only: its calls are graded, not run",
            call.name
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bfcl_documentation_reads_as_json_schema() {
        let f = json!({"name": "math.hypot", "description": "Hypotenuse.", "parameters": {
            "type": "dict", "required": ["x"], "properties": {
                "x": {"type": "float", "description": "x"},
                "type": {"type": "any"},
                "pts": {"type": "tuple", "items": {"type": "dict", "properties": {
                    "w": {"type": "integer", "enum": [1, 2]}}}},
                "opts": {"type": "dict", "additionalProperties": {"type": "float"}}}}});
        let spec = tool_spec(&f);
        assert_eq!(spec.name, "math.hypot");
        assert_eq!(
            spec.parameters,
            json!({"type": "object", "required": ["x"], "properties": {
                "x": {"type": "number", "description": "x"},
                "type": {},
                "pts": {"type": "array", "items": {"type": "object", "properties": {
                    "w": {"type": "integer", "enum": [1, 2]}}}},
                "opts": {"type": "object", "additionalProperties": {"type": "number"}}}})
        );
    }

    fn entry(id: &str, category: &str) -> Entry {
        Entry {
            id: id.into(),
            category: category.into(),
            question: vec![vec![
                json!({"role": "system", "content": "Be brief."}),
                json!({"role": "user", "content": format!("question {id}")}),
            ]],
            functions: vec![json!({"name": "f", "description": "d", "parameters": {
                "type": "dict", "properties": {"x": {"type": "integer"}}, "required": ["x"]}})],
            answers: if category.contains("irrelevance") {
                vec![]
            } else {
                vec![json!({"f": {"x": [1, 2]}}).as_object().unwrap().clone()]
            },
        }
    }

    #[test]
    fn a_source_splits_by_id_and_serves_its_own_tools_messages_and_rule() {
        let entries: Vec<Entry> = (0..200)
            .map(|i| entry(&format!("simple_python_{i}"), "simple_python"))
            .collect();
        let s = BfclSource::new(entries, 7);
        let train = s.len(Split::Train);
        assert_eq!(train + s.len(Split::Heldout), 200);
        assert!((110..170).contains(&train), "{train}");
        let item = s.item(Split::Heldout, 3);
        let id = s.item_id(&item).unwrap();
        assert_eq!(split_of(&id), Split::Heldout);
        assert_eq!(s.locate(Some(&json!(id)), ""), Ok(item));
        assert_eq!(s.prompt(&item), format!("question {id}"));
        assert_eq!(s.messages(&item).unwrap().len(), 2);
        assert!(s.call_only(&item));
        assert_eq!(s.tools(&item)[0].parameters["type"], "object");
        let gold = s.gold(&item).unwrap();
        assert_eq!(gold.calls, vec![Call::new("f", &[("x", "1")])]);
        let AnswerRule::Calls(rule) = gold.rule else {
            panic!("a calls rule")
        };
        assert_eq!(rule.verdict(&[("f".into(), json!({"x": 2}))]), Ok(()));
        assert!(s.execute(&item, &gold.calls[0]).is_err());
        assert!(s.locate(Some(&json!("multiple_0")), "").is_err());
        // Only held-out tasks: training falls back on them rather than on nothing.
        let only = BfclSource::from_splits(vec![], vec![entry("irrelevance_0", "irrelevance")], 1);
        assert_eq!(only.item(Split::Train, 5).split, Split::Heldout);
    }
}
