//! The task families (SPEC §3.2): generators seeded per item, tools with schemas and deterministic
//! implementations, the gold calls and answer of each item, and a parser from prompt text back to
//! the item, so episodes written by any model can be scored.
use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::env::tool_use::reward::{canonical_value, Call, Gold};
use crate::env::{TaskSource, ToolSet, ToolSpec};
use crate::rng::{self, Role};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// Arithmetic on n-digit numbers with add/sub/mul/div; some items need no call.
    Calc,
    /// One attribute of one entity from a seeded database; held-out entities test generalisation.
    Lookup,
    /// A relation then an attribute (two hops), optionally plus a constant (a third call).
    Chain,
    /// The same attribute of several entities, then their sum or max.
    Fanout,
    /// Tools listed in the prompt under shuffled ids, with distractors and no-tool items.
    Menu,
    /// `lookup`'s questions with no tool offered: the answer must come from the weights (the
    /// in-weight side of in-tool against in-weight learning).
    Recall,
}

pub use crate::env::Split;

/// The knobs of the task generators (they live in `[env]`).
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSpec {
    pub kind: TaskKind,
    pub seed: u64,
    /// calc/menu: operands have up to this many digits.
    pub digits: u32,
    /// calc/menu: share of items that need no call.
    pub no_call_share: f64,
    /// lookup/chain/fanout/menu: entities in the database.
    pub entities: usize,
    /// Share of entities reserved for the held-out split.
    pub heldout_share: f64,
    /// chain: add a constant to the looked-up value (a third call).
    pub chain_arith: bool,
    /// fanout: entities per question (2 or 3).
    pub width: usize,
    /// menu: extra tools listed beside the one needed.
    pub distractors: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    Add,
    Sub,
    Mul,
    Div,
    Get,
    Sum,
    Max,
}

const ALL_TOOLS: [Tool; 7] = [
    Tool::Add,
    Tool::Sub,
    Tool::Mul,
    Tool::Div,
    Tool::Get,
    Tool::Sum,
    Tool::Max,
];

impl Tool {
    pub fn name(self) -> &'static str {
        match self {
            Tool::Add => "add",
            Tool::Sub => "sub",
            Tool::Mul => "mul",
            Tool::Div => "div",
            Tool::Get => "get",
            Tool::Sum => "sum",
            Tool::Max => "max",
        }
    }

    fn from_name(name: &str) -> Option<Tool> {
        ALL_TOOLS.into_iter().find(|t| t.name() == name)
    }

    /// Argument names, in order; `width` is the arity of sum/max.
    pub fn args(self, width: usize) -> &'static [&'static str] {
        match self {
            Tool::Get => &["ent", "attr"],
            Tool::Sum | Tool::Max if width >= 3 => &["a", "b", "c"],
            _ => &["a", "b"],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attr {
    Age,
    Height,
    Score,
    Weight,
    Boss,
    Friend,
}

const NUMERIC: [Attr; 4] = [Attr::Age, Attr::Height, Attr::Score, Attr::Weight];
const RELATIONS: [Attr; 2] = [Attr::Boss, Attr::Friend];

impl Attr {
    pub fn name(self) -> &'static str {
        match self {
            Attr::Age => "age",
            Attr::Height => "height",
            Attr::Score => "score",
            Attr::Weight => "weight",
            Attr::Boss => "boss",
            Attr::Friend => "friend",
        }
    }

    fn from_name(s: &str) -> Option<Attr> {
        NUMERIC.into_iter().chain(RELATIONS).find(|a| a.name() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Add,
    Sub,
    Mul,
    Div,
}

impl Op {
    fn symbol(self) -> &'static str {
        match self {
            Op::Add => "+",
            Op::Sub => "−",
            Op::Mul => "*",
            Op::Div => "/",
        }
    }

    fn tool(self) -> Tool {
        match self {
            Op::Add => Tool::Add,
            Op::Sub => Tool::Sub,
            Op::Mul => Tool::Mul,
            Op::Div => Tool::Div,
        }
    }

    /// The operation a prompt writes as `s`; subtraction also as the ASCII hyphen, which
    /// people and models write for "−".
    fn from_symbol(s: &str) -> Option<Op> {
        if s == "-" {
            return Some(Op::Sub);
        }
        [Op::Add, Op::Sub, Op::Mul, Op::Div]
            .into_iter()
            .find(|o| o.symbol() == s)
    }
}

/// What an item asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// "what is 42 ?": no call needed.
    Echo(i64),
    Arith(Op, i64, i64),
    Lookup {
        ent: usize,
        attr: Attr,
    },
    /// attr of (rel of ent), plus `add` when set.
    Chain {
        ent: usize,
        rel: Attr,
        attr: Attr,
        add: Option<i64>,
    },
    /// sum or max (`Tool::Sum`/`Tool::Max`) of attr over ents.
    Fanout {
        agg: Tool,
        ents: Vec<usize>,
        attr: Attr,
    },
}

/// One generated question, with the tool menu when the task lists tools in the prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub query: Query,
    /// (menu id, tool): calls must use the id. Empty: tools are called by name.
    pub menu: Vec<(String, Tool)>,
}

/// The database behind `get`: numeric attributes and relations per entity.
#[derive(Debug, Clone)]
pub struct Db {
    numeric: Vec<[i64; 4]>,
    relations: Vec<[usize; 2]>,
    /// Entities of each split, drawn by a seeded shuffle so held-out ids look like training ids
    /// (every digit occurs at every position in both splits).
    train: Vec<usize>,
    heldout: Vec<usize>,
}

impl Db {
    fn new(spec: &TaskSpec) -> Self {
        let mut rng = rng::stream(spec.seed, Role::Env, 1);
        let n = spec.entities.max(2);
        let numeric = (0..n)
            .map(|_| {
                [
                    rng.gen_range(18..90),
                    rng.gen_range(140..210),
                    rng.gen_range(0..100),
                    rng.gen_range(40..130),
                ]
            })
            .collect();
        let relations = (0..n)
            .map(|i| [(i + rng.gen_range(1..n)) % n, (i + rng.gen_range(1..n)) % n])
            .collect();
        let held = ((n as f64 * spec.heldout_share).round() as usize).clamp(1, n - 1);
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut rng);
        let mut heldout = order.split_off(n - held);
        order.sort_unstable();
        heldout.sort_unstable();
        Db {
            numeric,
            relations,
            train: order,
            heldout,
        }
    }

    pub fn len(&self) -> usize {
        self.numeric.len()
    }

    pub fn is_empty(&self) -> bool {
        self.numeric.is_empty()
    }

    /// The value of `attr` of entity `ent` as text (`e<k>` for relations).
    pub fn get(&self, ent: usize, attr: Attr) -> Option<String> {
        let idx = |a: Attr, list: &[Attr]| list.iter().position(|x| *x == a);
        if let Some(i) = idx(attr, &NUMERIC) {
            return self.numeric.get(ent).map(|v| v[i].to_string());
        }
        let i = idx(attr, &RELATIONS)?;
        self.relations.get(ent).map(|r| format!("e{}", r[i]))
    }
}

/// A task family instance: its spec and database.
#[derive(Debug, Clone)]
pub struct Task {
    pub spec: TaskSpec,
    pub db: Db,
}

fn entity(s: &str) -> Option<usize> {
    s.strip_prefix('e')?.parse().ok()
}

impl Task {
    pub fn new(spec: TaskSpec) -> Self {
        let db = Db::new(&spec);
        Task { spec, db }
    }

    /// Entities of a split: a seeded `heldout_share` of them are held out.
    pub fn entities(&self, split: Split) -> &[usize] {
        match split {
            Split::Train => &self.db.train,
            Split::Heldout => &self.db.heldout,
        }
    }

    /// Item `index` of `split`, for evaluation and demonstrations; the same (seed, split, index)
    /// always gives the same item. Items own the environment's stream ids `2^40 xor (2·index +
    /// split)`, one per (split, index) below 2^62 (warm-start demonstrations use indices from
    /// 2^50); only held-out item 2^39 would meet the database's id 1, and it is refused.
    pub fn item(&self, split: Split, index: u64) -> Item {
        debug_assert!(index < 1 << 62, "item index {index} leaves its bit field");
        let stream = match split {
            Split::Train => 2 * index,
            Split::Heldout => 2 * index + 1,
        };
        debug_assert!(
            stream != ((1 << 40) | 1),
            "item stream would be the database's"
        );
        self.draw(
            split,
            &mut rng::stream(self.spec.seed, Role::Env, (1 << 40) ^ stream),
        )
    }

    /// The train-split item an actor draws for prompt `id` (its own stream, [`crate::ids`]).
    pub fn prompt_item(&self, id: &crate::ids::PromptId) -> Item {
        self.draw(Split::Train, &mut id.item_stream(self.spec.seed))
    }

    /// An item of `split` drawn from `rng`.
    fn draw(&self, split: Split, rng: &mut rand_chacha::ChaCha8Rng) -> Item {
        let ents = self.entities(split);
        let max = 10i64.pow(self.spec.digits.clamp(1, 9));
        let arith = |rng: &mut rand_chacha::ChaCha8Rng| {
            let op = [Op::Add, Op::Sub, Op::Mul, Op::Div][rng.gen_range(0..4)];
            let (a, b) = (rng.gen_range(0..max), rng.gen_range(0..max));
            match op {
                Op::Div => {
                    let b = b.max(1);
                    let q = rng.gen_range(0..max);
                    Query::Arith(op, b * q, b)
                }
                _ => Query::Arith(op, a, b),
            }
        };
        let query = match self.spec.kind {
            TaskKind::Calc | TaskKind::Menu if rng.gen::<f64>() < self.spec.no_call_share => {
                Query::Echo(rng.gen_range(0..max))
            }
            TaskKind::Calc => arith(rng),
            TaskKind::Lookup | TaskKind::Recall => Query::Lookup {
                ent: ents[rng.gen_range(0..ents.len())],
                attr: NUMERIC[rng.gen_range(0..4)],
            },
            TaskKind::Chain => Query::Chain {
                ent: ents[rng.gen_range(0..ents.len())],
                rel: RELATIONS[rng.gen_range(0..2)],
                attr: NUMERIC[rng.gen_range(0..4)],
                add: self.spec.chain_arith.then(|| rng.gen_range(1..10)),
            },
            TaskKind::Fanout => {
                let mut pool: Vec<usize> = ents.to_vec();
                pool.shuffle(rng);
                pool.truncate(self.spec.width.clamp(2, 3));
                let agg = if rng.gen::<bool>() {
                    Tool::Sum
                } else {
                    Tool::Max
                };
                Query::Fanout {
                    agg,
                    ents: pool,
                    attr: NUMERIC[rng.gen_range(0..4)],
                }
            }
            TaskKind::Menu => {
                if rng.gen::<bool>() {
                    arith(rng)
                } else {
                    Query::Lookup {
                        ent: ents[rng.gen_range(0..ents.len())],
                        attr: NUMERIC[rng.gen_range(0..4)],
                    }
                }
            }
        };
        let menu = if self.spec.kind == TaskKind::Menu {
            self.menu(&query, rng)
        } else {
            Vec::new()
        };
        Item { query, menu }
    }

    fn menu(&self, query: &Query, rng: &mut impl Rng) -> Vec<(String, Tool)> {
        let needed = match query {
            Query::Arith(op, ..) => Some(op.tool()),
            Query::Lookup { .. } => Some(Tool::Get),
            _ => None,
        };
        let mut tools: Vec<Tool> = ALL_TOOLS
            .into_iter()
            .filter(|t| Some(*t) != needed)
            .collect();
        tools.shuffle(rng);
        tools.truncate(self.spec.distractors.min(6));
        tools.extend(needed);
        tools.shuffle(rng);
        let mut ids: Vec<usize> = (0..8).collect();
        ids.shuffle(rng);
        tools
            .into_iter()
            .zip(ids)
            .map(|(t, i)| (format!("t{i}"), t))
            .collect()
    }

    /// The prompt's text.
    pub fn prompt(&self, item: &Item) -> String {
        let mut s = String::new();
        if !item.menu.is_empty() {
            s.push_str("tools");
            for (id, tool) in &item.menu {
                s.push_str(&format!(" {id} = {}", tool.name()));
            }
            s.push_str(" ; ");
        }
        s.push_str("what is ");
        match &item.query {
            Query::Echo(v) => s.push_str(&v.to_string()),
            Query::Arith(op, a, b) => s.push_str(&format!("{a} {} {b}", op.symbol())),
            Query::Lookup { ent, attr } => s.push_str(&format!("the {} of e{ent}", attr.name())),
            Query::Chain {
                ent,
                rel,
                attr,
                add,
            } => {
                s.push_str(&format!(
                    "the {} of the {} of e{ent}",
                    attr.name(),
                    rel.name()
                ));
                if let Some(k) = add {
                    s.push_str(&format!(" + {k}"));
                }
            }
            Query::Fanout { agg, ents, attr } => {
                let list: Vec<String> = ents.iter().map(|e| format!("e{e}")).collect();
                s.push_str(&format!(
                    "the {} of the {} of {}",
                    agg.name(),
                    attr.name(),
                    list.join(" and ")
                ));
            }
        }
        s.push_str(" ?");
        s
    }

    /// The prompt as a chat user message: `What is 123 * 45?`, `What is the age of e17?`, `What
    /// is the age of the boss of e3 plus 5?`. A menu item names its tools first (`Tools: t3 =
    /// add, t1 = mul.`); the tools' schemas reach the model through the chat format.
    pub fn question(&self, item: &Item) -> String {
        let prompt = self.prompt(item);
        let body = match prompt.split_once(" ; ") {
            Some((_, body)) => body,
            None => &prompt,
        };
        let body = body.strip_prefix("what is ").unwrap_or(body);
        let body = body
            .strip_suffix(" ?")
            .unwrap_or(body)
            .replace(" + ", " plus ");
        let mut s = String::new();
        if !item.menu.is_empty() {
            let menu: Vec<String> = item
                .menu
                .iter()
                .map(|(id, tool)| format!("{id} = {}", tool.name()))
                .collect();
            s.push_str(&format!("Tools: {}. ", menu.join(", ")));
        }
        s.push_str(&format!("What is {body}?"));
        s
    }

    /// Reads a prompt back into an item: the token protocol's text ([`Task::prompt`]) or the
    /// chat question ([`Task::question`]).
    pub fn parse_prompt(&self, text: &str) -> Option<Item> {
        self.parse_words(text)
            .or_else(|| self.parse_words(&Self::question_to_words(text)?))
    }

    /// A chat question in the token protocol's words.
    fn question_to_words(text: &str) -> Option<String> {
        let text = text.trim();
        let (menu, rest) = match text.strip_prefix("Tools: ") {
            Some(rest) => {
                let (menu, rest) = rest.split_once(". ")?;
                (Some(menu.replace(',', "")), rest)
            }
            None => (None, text),
        };
        let body = rest.strip_prefix("What is ")?.strip_suffix('?')?;
        let body = body.replace(" plus ", " + ").replace(" minus ", " − ");
        Some(match menu {
            Some(m) => format!("tools {m} ; what is {body} ?"),
            None => format!("what is {body} ?"),
        })
    }

    /// Reads a prompt written by [`Task::prompt`] back into an item.
    fn parse_words(&self, text: &str) -> Option<Item> {
        let words: Vec<&str> = text.split_whitespace().collect();
        let (menu, rest) = match words.iter().position(|w| *w == ";") {
            Some(semi) if words.first() == Some(&"tools") => {
                let mut menu = Vec::new();
                for chunk in words[1..semi].chunks(3) {
                    match chunk {
                        [id, "=", name] => menu.push((id.to_string(), Tool::from_name(name)?)),
                        _ => return None,
                    }
                }
                (menu, &words[semi + 1..])
            }
            _ => (Vec::new(), &words[..]),
        };
        let body = rest.strip_prefix(&["what", "is"])?.strip_suffix(&["?"])?;
        let num = |s: &str| s.parse::<i64>().ok();
        let query = match body {
            [v] => Query::Echo(num(v)?),
            [a, op, b] => Query::Arith(Op::from_symbol(op)?, num(a)?, num(b)?),
            ["the", attr, "of", e] => Query::Lookup {
                ent: entity(e)?,
                attr: Attr::from_name(attr)?,
            },
            ["the", agg @ ("sum" | "max"), "of", "the", attr, "of", list @ ..] => {
                let ents = list.iter().enumerate().map(|(i, w)| {
                    if i % 2 == 1 {
                        (*w == "and").then_some(usize::MAX)
                    } else {
                        entity(w)
                    }
                });
                let ents: Vec<usize> = ents
                    .collect::<Option<Vec<_>>>()?
                    .into_iter()
                    .step_by(2)
                    .collect();
                let agg = Tool::from_name(agg).filter(|t| matches!(t, Tool::Sum | Tool::Max))?;
                Query::Fanout {
                    agg,
                    ents,
                    attr: Attr::from_name(attr)?,
                }
            }
            ["the", attr, "of", "the", rel, "of", e, tail @ ..] => {
                let add = match tail {
                    [] => None,
                    ["+", k] => Some(num(k)?),
                    _ => return None,
                };
                Query::Chain {
                    ent: entity(e)?,
                    rel: Attr::from_name(rel)?,
                    attr: Attr::from_name(attr)?,
                    add,
                }
            }
            _ => return None,
        };
        Some(Item { query, menu })
    }

    /// The name a call to `tool` must use in this item.
    fn call_name(item: &Item, tool: Tool) -> String {
        item.menu
            .iter()
            .find(|(_, t)| *t == tool)
            .map(|(id, _)| id.clone())
            .unwrap_or_else(|| tool.name().to_string())
    }

    /// The gold calls (in a canonical order), the answer, and the intermediate values needed.
    pub fn gold(&self, item: &Item) -> Option<Gold> {
        let width = self.spec.width;
        let call = |tool: Tool, values: &[String]| {
            let args: Vec<(&str, &str)> = tool
                .args(width)
                .iter()
                .copied()
                .zip(values.iter().map(String::as_str))
                .collect();
            Call::new(&Self::call_name(item, tool), &args)
        };
        let mut calls = Vec::new();
        let mut needed = Vec::new();
        let answer = match &item.query {
            Query::Echo(v) => v.to_string(),
            Query::Arith(op, a, b) => {
                let r = apply(op.tool(), &[*a, *b]).ok()?;
                calls.push(call(op.tool(), &[a.to_string(), b.to_string()]));
                needed.push(r.to_string());
                r.to_string()
            }
            Query::Lookup { ent, attr } => {
                let v = self.db.get(*ent, *attr)?;
                if self.spec.kind != TaskKind::Recall {
                    calls.push(call(Tool::Get, &[format!("e{ent}"), attr.name().into()]));
                    needed.push(v.clone());
                }
                v
            }
            Query::Chain {
                ent,
                rel,
                attr,
                add,
            } => {
                let mid = self.db.get(*ent, *rel)?;
                calls.push(call(Tool::Get, &[format!("e{ent}"), rel.name().into()]));
                let v = self.db.get(entity(&mid)?, *attr)?;
                calls.push(call(Tool::Get, &[mid.clone(), attr.name().into()]));
                needed.extend([mid, v.clone()]);
                match add {
                    Some(k) => {
                        let r = v.parse::<i64>().ok()? + k;
                        calls.push(call(Tool::Add, &[v, k.to_string()]));
                        needed.push(r.to_string());
                        r.to_string()
                    }
                    None => v,
                }
            }
            Query::Fanout { agg, ents, attr } => {
                let mut values = Vec::new();
                for e in ents {
                    let v = self.db.get(*e, *attr)?;
                    calls.push(call(Tool::Get, &[format!("e{e}"), attr.name().into()]));
                    values.push(v);
                }
                let nums: Vec<i64> = values
                    .iter()
                    .map(|v| v.parse().ok())
                    .collect::<Option<_>>()?;
                let r = apply(*agg, &nums).ok()?.to_string();
                calls.push(call(*agg, &values));
                needed.extend(values);
                needed.push(r.clone());
                r
            }
        };
        Some(Gold {
            calls,
            rule: Default::default(),
            answer,
            needed,
        })
    }

    /// Executes a call: the tool must exist (by id when the item lists a menu), the argument
    /// names must be exactly the schema's, and the values of the right type.
    pub fn execute(&self, item: &Item, call: &Call) -> Result<String, String> {
        let tool = if self.spec.kind == TaskKind::Recall {
            None // nothing is offered
        } else if item.menu.is_empty() {
            Tool::from_name(&call.name)
        } else {
            item.menu
                .iter()
                .find(|(id, _)| *id == call.name)
                .map(|(_, t)| *t)
        }
        .ok_or_else(|| format!("unknown tool {:?}", call.name))?;
        let schema = tool.args(self.spec.width);
        if call.arguments.len() != schema.len()
            || schema.iter().any(|a| !call.arguments.contains_key(*a))
        {
            return Err(format!("{} takes arguments {schema:?}", tool.name()));
        }
        let arg = |name: &str| call.arguments[name].as_str();
        match tool {
            Tool::Get => {
                let ent = entity(arg("ent")).ok_or("ent must be an entity like e17")?;
                let attr = Attr::from_name(arg("attr")).ok_or("unknown attribute")?;
                self.db
                    .get(ent, attr)
                    .ok_or_else(|| format!("no entity e{ent}"))
            }
            _ => {
                let nums = schema
                    .iter()
                    .map(|a| {
                        canonical_value(arg(a))
                            .parse::<i64>()
                            .map_err(|_| format!("{a} must be an integer"))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                apply(tool, &nums).map(|v| v.to_string())
            }
        }
    }
}

/// Integer arithmetic with overflow and division checks.
fn apply(tool: Tool, x: &[i64]) -> Result<i64, String> {
    let overflow = || "overflow".to_string();
    match tool {
        Tool::Add => x[0].checked_add(x[1]).ok_or_else(overflow),
        Tool::Sub => x[0].checked_sub(x[1]).ok_or_else(overflow),
        Tool::Mul => x[0].checked_mul(x[1]).ok_or_else(overflow),
        Tool::Div if x[1] == 0 => Err("division by zero".into()),
        Tool::Div => Ok(x[0].div_euclid(x[1])),
        Tool::Sum => x
            .iter()
            .try_fold(0i64, |acc, v| acc.checked_add(*v))
            .ok_or_else(overflow),
        Tool::Max => x.iter().copied().max().ok_or_else(|| "no values".into()),
        Tool::Get => Err("get is not arithmetic".into()),
    }
}

impl Tool {
    /// What the tool does, for a tool list or a chat template.
    pub fn description(self) -> &'static str {
        match self {
            Tool::Add => "Adds two integers: a + b.",
            Tool::Sub => "Subtracts two integers: a - b.",
            Tool::Mul => "Multiplies two integers: a * b.",
            Tool::Div => "Divides two integers exactly: a / b.",
            Tool::Get => "Looks up an attribute of an entity (e.g. ent e17, attr age).",
            Tool::Sum => "Adds its integer arguments.",
            Tool::Max => "The largest of its integer arguments.",
        }
    }

    /// The tool as offered to a policy, called `name` (its own name, or a menu id).
    pub fn spec(self, name: &str, width: usize) -> ToolSpec {
        let mut properties = serde_json::Map::new();
        for &arg in self.args(width) {
            let schema = match arg {
                "ent" => {
                    serde_json::json!({"type": "string", "description": "entity id, e.g. e17"})
                }
                "attr" => serde_json::json!({
                    "type": "string",
                    "enum": NUMERIC.into_iter().chain(RELATIONS).map(Attr::name).collect::<Vec<_>>(),
                }),
                _ => serde_json::json!({"type": "integer"}),
            };
            properties.insert(arg.to_string(), schema);
        }
        ToolSpec {
            name: name.to_string(),
            description: self.description().to_string(),
            parameters: serde_json::json!({
                "type": "object",
                "properties": properties,
                "required": self.args(width),
            }),
        }
    }
}

impl TaskSource for Task {
    type Item = Item;

    fn prompt_item(&self, id: &crate::ids::PromptId) -> Item {
        Task::prompt_item(self, id)
    }

    fn item(&self, split: Split, index: u64) -> Item {
        Task::item(self, split, index)
    }

    fn prompt(&self, item: &Item) -> String {
        Task::prompt(self, item)
    }

    fn question(&self, item: &Item) -> String {
        Task::question(self, item)
    }

    /// The family's tools by name, or the item's menu under its ids.
    fn tools(&self, item: &Item) -> Vec<ToolSpec> {
        let width = self.spec.width;
        if !item.menu.is_empty() {
            return item
                .menu
                .iter()
                .map(|(id, tool)| tool.spec(id, width))
                .collect();
        }
        let tools: &[Tool] = match self.spec.kind {
            TaskKind::Calc | TaskKind::Menu => &[Tool::Add, Tool::Sub, Tool::Mul, Tool::Div],
            TaskKind::Lookup => &[Tool::Get],
            TaskKind::Chain if self.spec.chain_arith => &[Tool::Get, Tool::Add],
            TaskKind::Chain => &[Tool::Get],
            TaskKind::Fanout => &[Tool::Get, Tool::Sum, Tool::Max],
            TaskKind::Recall => &[],
        };
        tools.iter().map(|t| t.spec(t.name(), width)).collect()
    }

    fn gold(&self, item: &Item) -> Option<Gold> {
        Task::gold(self, item)
    }

    fn name(&self) -> String {
        format!("{:?}", self.spec.kind).to_lowercase()
    }

    /// The item whose prompt (or chat question) `prompt` is.
    fn locate(&self, _id: Option<&serde_json::Value>, prompt: &str) -> Result<Item, String> {
        self.parse_prompt(prompt)
            .ok_or_else(|| format!("not a {:?} prompt: {prompt:?}", self.spec.kind))
    }
}

impl ToolSet<Item> for Task {
    fn execute(&self, item: &Item, call: &Call) -> Result<String, String> {
        Task::execute(self, item, call)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Every task family.
    pub(crate) const FAMILIES: [TaskKind; 6] = [
        TaskKind::Calc,
        TaskKind::Lookup,
        TaskKind::Chain,
        TaskKind::Fanout,
        TaskKind::Menu,
        TaskKind::Recall,
    ];

    pub fn spec(kind: TaskKind) -> TaskSpec {
        TaskSpec {
            kind,
            seed: 1,
            digits: 2,
            no_call_share: 0.2,
            entities: 50,
            heldout_share: 0.2,
            chain_arith: true,
            width: 3,
            distractors: 2,
        }
    }

    #[test]
    fn every_family_parses_back_and_its_gold_calls_execute_to_the_answer() {
        for kind in FAMILIES {
            let task = Task::new(spec(kind));
            for split in [Split::Train, Split::Heldout] {
                for i in 0..50 {
                    let item = task.item(split, i);
                    let prompt = task.prompt(&item);
                    assert_eq!(task.parse_prompt(&prompt).as_ref(), Some(&item), "{prompt}");
                    let gold = task.gold(&item).unwrap();
                    let results: Vec<String> = gold
                        .calls
                        .iter()
                        .map(|c| task.execute(&item, c).unwrap())
                        .collect();
                    if let Some(last) = results.last() {
                        assert_eq!(*last, gold.answer, "{prompt}");
                    }
                    assert_eq!(results, gold.needed, "{prompt}");
                }
            }
        }
    }

    /// Subtraction is read as people write it: "−", the ASCII hyphen, or "minus".
    #[test]
    fn subtraction_reads_with_a_hyphen_or_minus() {
        let task = Task::new(spec(TaskKind::Calc));
        let want = task
            .parse_prompt("what is 30 − 4 ?")
            .expect("the task's own form");
        for text in ["what is 30 - 4 ?", "What is 30 - 4?", "What is 30 minus 4?"] {
            assert_eq!(task.parse_prompt(text).as_ref(), Some(&want), "{text}");
        }
        assert_eq!(task.gold(&want).unwrap().answer, "26");
        assert!(task.parse_prompt("what is 30 ~ 4 ?").is_none());
    }

    #[test]
    fn heldout_lookup_items_use_only_heldout_entities() {
        let task = Task::new(spec(TaskKind::Lookup));
        let (train, held) = (task.entities(Split::Train), task.entities(Split::Heldout));
        assert_eq!((train.len(), held.len()), (40, 10));
        assert!(train.iter().all(|e| !held.contains(e)));
        // Not simply the last ids: the split is a seeded shuffle.
        assert!(held.iter().any(|&e| e < 40), "{held:?}");
        for i in 0..100 {
            let Query::Lookup { ent, .. } = task.item(Split::Heldout, i).query else {
                panic!()
            };
            assert!(task.entities(Split::Heldout).contains(&ent), "e{ent}");
            let Query::Lookup { ent, .. } = task.item(Split::Train, i).query else {
                panic!()
            };
            assert!(task.entities(Split::Train).contains(&ent), "e{ent}");
        }
    }

    #[test]
    fn malformed_calls_are_errors_not_panics() {
        let task = Task::new(spec(TaskKind::Calc));
        let item = task.item(Split::Train, 0);
        for call in [
            Call::new("pow", &[("a", "1"), ("b", "2")]),
            Call::new("add", &[("a", "1")]),
            Call::new("add", &[("a", "1"), ("b", "2"), ("c", "3")]),
            Call::new("add", &[("a", "x"), ("b", "2")]),
            Call::new("div", &[("a", "1"), ("b", "0")]),
            Call::new("mul", &[("a", "9223372036854775807"), ("b", "2")]),
        ] {
            assert!(task.execute(&item, &call).is_err(), "{call:?}");
        }
        let lookup = Task::new(spec(TaskKind::Lookup));
        let item = lookup.item(Split::Train, 0);
        assert!(lookup
            .execute(
                &item,
                &Call::new("get", &[("ent", "e999"), ("attr", "age")])
            )
            .is_err());
        assert!(lookup
            .execute(
                &item,
                &Call::new("get", &[("ent", "e1"), ("attr", "colour")])
            )
            .is_err());
    }

    #[test]
    fn recall_asks_lookup_questions_with_no_tool() {
        let (lookup, recall) = (
            Task::new(spec(TaskKind::Lookup)),
            Task::new(spec(TaskKind::Recall)),
        );
        for i in 0..50 {
            let item = recall.item(Split::Train, i);
            assert_eq!(item, lookup.item(Split::Train, i), "the same questions");
            let (g, want) = (recall.gold(&item).unwrap(), lookup.gold(&item).unwrap());
            assert_eq!(g.answer, want.answer);
            assert!(g.calls.is_empty() && g.needed.is_empty());
            assert!(TaskSource::tools(&recall, &item).is_empty());
            // The lookup tool exists elsewhere, not here.
            assert!(recall.execute(&item, &want.calls[0]).is_err());
        }
    }

    #[test]
    fn menu_calls_must_use_the_listed_ids() {
        let task = Task::new(spec(TaskKind::Menu));
        let (item, gold) = (0..50)
            .map(|i| task.item(Split::Train, i))
            .find_map(|it| {
                let g = task.gold(&it)?;
                (!g.calls.is_empty()).then_some((it, g))
            })
            .unwrap();
        assert!(gold.calls[0].name.starts_with('t'));
        assert!(task.execute(&item, &gold.calls[0]).is_ok());
        let mut by_name = gold.calls[0].clone();
        by_name.name = item
            .menu
            .iter()
            .find(|(id, _)| *id == by_name.name)
            .unwrap()
            .1
            .name()
            .into();
        assert!(
            task.execute(&item, &by_name).is_err(),
            "plain names are not on the menu"
        );
        assert_eq!(item.menu.len(), 3, "the needed tool and two distractors");
    }

    /// Every tool a gold call uses is among the tools offered with the item, with exactly the
    /// arguments its schema requires.
    #[test]
    fn the_offered_tools_cover_the_gold_calls() {
        for kind in FAMILIES {
            let task = Task::new(spec(kind));
            for i in 0..50 {
                let item = task.item(Split::Train, i);
                let offered = TaskSource::tools(&task, &item);
                for call in task.gold(&item).unwrap().calls {
                    let tool = offered
                        .iter()
                        .find(|t| t.name == call.name)
                        .unwrap_or_else(|| panic!("{kind:?}: {} not offered", call.name));
                    let mut want: Vec<&str> = tool.parameters["required"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_str().unwrap())
                        .collect();
                    let mut given: Vec<&str> = call.arguments.keys().map(String::as_str).collect();
                    given.sort_unstable();
                    want.sort_unstable();
                    assert_eq!(given, want, "{kind:?}: {}", call.name);
                }
            }
        }
    }
}
