//! BFCL's AST checker (`bfcl_eval/eval_checker/ast_eval/ast_checker.py`, Python categories) on
//! JSON values, verdict for verdict: a call is right when its function is the expected one, its
//! required parameters are there, it has no parameter the function or the answer lacks, every
//! value has the documented type (an integer passes for a float) and is among the acceptable
//! ones (strings compared after BFCL's standardisation), and every parameter it leaves out may
//! be left out (`""` among its acceptable values). `parallel*` categories match calls to answers
//! in any order; `multiple` checks the one call against the expected function among several;
//! `irrelevance` is right only with no call.
//!
//! Values follow Python's JSON reading: a number written without a fraction or exponent is an
//! `int`, any other a `float`, and Python's `==` (so `1 == 1.0` and `True == 1`) decides whether
//! a value is among the acceptable ones.
use serde_json::{Map, Value};

/// One decoded call: the function's name and its arguments object.
pub type DecodedCall = (String, Value);

/// What a category checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checker {
    /// Exactly one call, of the one function offered.
    Simple,
    /// One call, of the expected function among several offered.
    Multiple,
    /// Every expected call once, in any order (`parallel`, `parallel_multiple`).
    Parallel,
    /// No call at all.
    Irrelevance,
}

impl Checker {
    /// The checker of a BFCL category name (`simple_python`, `live_multiple`, …), as BFCL
    /// picks it: `parallel` in the name first, then `multiple`, then `irrelevance`, else simple.
    pub fn of_category(category: &str) -> Checker {
        if category.contains("irrelevance") {
            Checker::Irrelevance
        } else if category.contains("parallel") {
            Checker::Parallel
        } else if category.contains("multiple") {
            Checker::Multiple
        } else {
            Checker::Simple
        }
    }
}

/// Python's type of a JSON value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PyType {
    Int,
    Float,
    Bool,
    Str,
    List,
    Dict,
    None,
}

impl PyType {
    fn of(v: &Value) -> PyType {
        match v {
            Value::Null => PyType::None,
            Value::Bool(_) => PyType::Bool,
            Value::Number(n) if n.is_f64() => PyType::Float,
            Value::Number(_) => PyType::Int,
            Value::String(_) => PyType::Str,
            Value::Array(_) => PyType::List,
            Value::Object(_) => PyType::Dict,
        }
    }

    /// BFCL's Python type for a documented type (`PYTHON_TYPE_MAPPING`: `any` reads as `str`).
    fn documented(ty: &str) -> Option<PyType> {
        Some(match ty {
            "string" | "any" => PyType::Str,
            "integer" => PyType::Int,
            "float" => PyType::Float,
            "boolean" => PyType::Bool,
            "array" | "tuple" => PyType::List,
            "dict" => PyType::Dict,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            PyType::Int => "int",
            PyType::Float => "float",
            PyType::Bool => "bool",
            PyType::Str => "str",
            PyType::List => "list",
            PyType::Dict => "dict",
            PyType::None => "NoneType",
        }
    }
}

/// A number as Python compares it (`True` is 1).
fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        Value::Number(n) => n.as_f64(),
        _ => None,
    }
}

/// Python's `==` on JSON values.
pub fn py_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(x), Value::String(y)) => x == y,
        (Value::Null, Value::Null) => true,
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| py_eq(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| py_eq(v, w)))
        }
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(i), Some(j)) => i == j,
            _ => x.as_f64() == y.as_f64(),
        },
        _ => match (number(a), number(b)) {
            (Some(x), Some(y)) => x == y,
            _ => false,
        },
    }
}

/// Python's `value in list`.
fn py_in(value: &Value, list: &[Value]) -> bool {
    list.iter().any(|v| py_eq(value, v))
}

/// BFCL's `standardize_string`: spaces and `,./-_*^` removed, lower-cased, `'` read as `"`.
pub fn standardize(s: &str) -> String {
    s.chars()
        .filter(|c| !matches!(c, ' ' | ',' | '.' | '/' | '-' | '_' | '*' | '^'))
        .collect::<String>()
        .to_lowercase()
        .replace('\'', "\"")
}

/// A value with its strings standardised (the string itself, or a list's string elements).
fn standardized(v: &Value) -> Value {
    match v {
        Value::String(s) => Value::String(standardize(s)),
        other => other.clone(),
    }
}

/// The first acceptable value that is not the "may be left out" marker `""`.
fn first_value(possible: &[Value]) -> Option<&Value> {
    possible
        .iter()
        .find(|a| *a != &Value::String(String::new()))
}

/// Whether `accepted` (a parameter's acceptable values) allows leaving it out.
fn may_leave_out(accepted: &Value) -> bool {
    accepted
        .as_array()
        .is_some_and(|a| a.contains(&Value::String(String::new())))
}

/// The type of [`first_value`].
fn answer_type(possible: &[Value]) -> Option<PyType> {
    first_value(possible).map(PyType::of)
}

/// `type_checker`: whether `value` has the documented type (or the answers' type: a variable
/// name where a value was expected); `Ok(is_variable)`, or why not.
fn type_check(
    param: &str,
    value: &Value,
    possible: &[Value],
    expected: PyType,
    nested: Option<PyType>,
) -> Result<bool, String> {
    let answers = answer_type(possible);
    let is_variable = answers.is_some_and(|t| t != expected);
    if PyType::of(value) == expected {
        let Some(inner) = nested else {
            return Ok(is_variable);
        };
        for item in possible {
            let ok = match (item, value) {
                (Value::Array(candidates), Value::Array(values)) => values
                    .iter()
                    .all(|v| type_check(param, v, candidates, inner, None).is_ok()),
                _ => true,
            };
            if ok {
                return Ok(is_variable);
            }
        }
        if answers == Some(PyType::of(value)) {
            // BFCL returns its failed nested result here, marked a variable: still invalid.
            return Err(format!(
                "nested type checking failed for parameter {param:?}"
            ));
        }
        return Err(format!(
            "nested type checking failed for parameter {param:?}; incorrect type, expected {}",
            expected.name()
        ));
    }
    if answers.is_some_and(|t| t == PyType::of(value)) {
        return Ok(true);
    }
    Err(format!(
        "incorrect type for parameter {param:?}: expected {}, got {}",
        expected.name(),
        PyType::of(value).name()
    ))
}

/// `string_checker`.
fn check_string(param: &str, value: &str, possible: &[Value]) -> Result<(), String> {
    let want: Vec<String> = possible
        .iter()
        .filter_map(Value::as_str)
        .map(standardize)
        .collect();
    if want.contains(&standardize(value)) {
        Ok(())
    } else {
        Err(format!("invalid value for parameter {param:?}: {value:?}"))
    }
}

/// A possible answer's elements standardised (a list, or `""`, which Python's `len` reads as
/// an empty list).
fn standardized_list(answer: &Value) -> Vec<Value> {
    match answer {
        Value::Array(items) => items.iter().map(standardized).collect(),
        Value::String(s) => s
            .chars()
            .map(|c| standardized(&Value::String(c.to_string())))
            .collect(),
        _ => Vec::new(),
    }
}

/// `list_checker`.
fn check_list(param: &str, value: &[Value], possible: &[Value]) -> Result<(), String> {
    let got = Value::Array(value.iter().map(standardized).collect());
    let ok = possible
        .iter()
        .any(|answer| py_eq(&got, &Value::Array(standardized_list(answer))));
    if ok {
        Ok(())
    } else {
        Err(format!("invalid value for parameter {param:?}: {value:?}"))
    }
}

/// `dict_checker`: `value` matches one of the possible dicts key by key.
fn check_dict(param: &str, value: &Map<String, Value>, possible: &[Value]) -> Result<(), String> {
    let mut last = Err(format!("no possible dict for parameter {param:?}"));
    for answer in possible {
        if answer == &Value::String(String::new()) {
            continue;
        }
        let Value::Object(answer) = answer else {
            last = Err(format!(
                "parameter {param:?}: a possible answer is not a dict"
            ));
            continue;
        };
        last = dict_matches(value, answer);
        if last.is_ok() {
            return Ok(());
        }
    }
    last
}

fn dict_matches(value: &Map<String, Value>, answer: &Map<String, Value>) -> Result<(), String> {
    for (key, v) in value {
        let Some(accepted) = answer.get(key) else {
            return Err(format!("unexpected dict key {key:?}"));
        };
        let accepted: Vec<Value> = match accepted {
            Value::Array(a) => a.iter().map(standardized).collect(),
            other => vec![standardized(other)],
        };
        if !py_in(&standardized(v), &accepted) {
            return Err(format!("invalid value for dict key {key:?}"));
        }
    }
    for (key, accepted) in answer {
        // Python's `"" in accepted`: any list holding "", any string at all.
        let optional = match accepted {
            Value::Array(a) => a.contains(&Value::String(String::new())),
            Value::String(_) => true,
            _ => false,
        };
        if !value.contains_key(key) && !optional {
            return Err(format!("missing dict key {key:?}"));
        }
    }
    Ok(())
}

/// `list_dict_checker`: the list of dicts matches one possible list, dict by dict in order.
fn check_list_of_dicts(param: &str, value: &[Value], possible: &[Value]) -> Result<(), String> {
    let mut last = Err(format!("no possible list for parameter {param:?}"));
    for answer in possible {
        let dicts: Vec<Value> = match answer {
            Value::Array(a) => a.clone(),
            Value::String(s) if s.is_empty() => Vec::new(),
            _ => continue,
        };
        if dicts.len() != value.len() {
            last = Err(format!("wrong number of dicts for parameter {param:?}"));
            continue;
        }
        let all = value.iter().zip(&dicts).try_for_each(|(v, d)| match v {
            Value::Object(v) => check_dict(param, v, std::slice::from_ref(d)),
            _ => Err(format!("parameter {param:?}: an element is not a dict")),
        });
        if all.is_ok() {
            return Ok(());
        }
        last = all;
    }
    last
}

/// One parameter's value against its documentation `detail` and its acceptable values
/// `accepted` (the per-parameter part of `simple_function_checker`).
fn check_value(param: &str, detail: &Value, value: &Value, accepted: &Value) -> Result<(), String> {
    let accepted: &[Value] = accepted.as_array().map_or(&[], Vec::as_slice);
    let documented = detail["type"].as_str().unwrap_or_default();
    let expected = PyType::documented(documented)
        .ok_or_else(|| format!("parameter {param:?} has the unknown type {documented:?}"))?;
    let nested = match documented {
        "array" | "tuple" => Some(
            detail["items"]["type"]
                .as_str()
                .and_then(PyType::documented)
                .ok_or_else(|| format!("parameter {param:?}: an array without an item type"))?,
        ),
        _ => None,
    };
    // An integer passes for a float (Python converts it).
    let value = match (documented, value) {
        ("float", Value::Number(n)) if !n.is_f64() => Value::from(n.as_f64().unwrap_or_default()),
        _ => value.clone(),
    };
    let is_variable = type_check(param, &value, accepted, expected, nested)?;
    if !is_variable {
        match (&value, expected, nested) {
            (Value::Object(d), PyType::Dict, _) => return check_dict(param, d, accepted),
            (Value::Array(l), PyType::List, Some(PyType::Dict)) => {
                return check_list_of_dicts(param, l, accepted)
            }
            (Value::String(s), PyType::Str, _) => return check_string(param, s, accepted),
            (Value::Array(l), PyType::List, _) => return check_list(param, l, accepted),
            _ => {}
        }
    }
    if py_in(&value, accepted) {
        Ok(())
    } else {
        Err(format!("invalid value for parameter {param:?}: {value}"))
    }
}

/// `simple_function_checker`: one call against one expected call.
fn check_call(
    function: &Value,
    call: &DecodedCall,
    expected: &Map<String, Value>,
) -> Result<(), String> {
    let Some(Value::Object(answer)) = expected.values().next() else {
        return Err("the expected call has no parameters object".into());
    };
    let name = function["name"].as_str().unwrap_or_default();
    if call.0 != name {
        return Err(format!("function {name:?} not found in the output"));
    }
    let empty = Map::new();
    let params = call.1.as_object().unwrap_or(&empty);
    let details = function["parameters"]["properties"]
        .as_object()
        .unwrap_or(&empty);
    let required: Vec<&str> = function["parameters"]["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for param in &required {
        if !params.contains_key(*param) {
            return Err(format!("missing required parameter {param:?}"));
        }
    }
    for (param, value) in params {
        let (Some(detail), Some(accepted)) = (details.get(param), answer.get(param)) else {
            return Err(format!("unexpected parameter {param:?}"));
        };
        check_value(param, detail, value, accepted)?;
    }
    for (param, accepted) in answer {
        if !params.contains_key(param) && !may_leave_out(accepted) {
            return Err(format!("parameter {param:?} left out, and it may not be"));
        }
    }
    Ok(())
}

/// The function documentation named `name` among `functions`.
fn find<'a>(functions: &'a [Value], name: &str) -> Option<&'a Value> {
    functions.iter().find(|f| f["name"] == name)
}

/// The expected function's name of one ground-truth call (`{name: {param: [values]}}`).
fn expected_name(expected: &Map<String, Value>) -> &str {
    expected.keys().next().map_or("", String::as_str)
}

/// BFCL's verdict on `calls` for a task of checker `checker` offering `functions`, whose ground
/// truth is `answers` (one `{name: {param: [acceptable values]}}` per expected call): `Ok` when
/// right, else the first reason it is not.
pub fn check(
    checker: Checker,
    functions: &[Value],
    calls: &[DecodedCall],
    answers: &[Map<String, Value>],
) -> Result<(), String> {
    match checker {
        Checker::Irrelevance => {
            if calls.is_empty() {
                Ok(())
            } else {
                Err("a function was called where none applies".into())
            }
        }
        Checker::Simple => {
            if calls.len() != 1 {
                return Err("wrong number of functions".into());
            }
            let (function, answer) = (functions.first(), answers.first());
            match (function, answer) {
                (Some(f), Some(a)) => check_call(f, &calls[0], a),
                _ => Err("the task has no function or no answer".into()),
            }
        }
        Checker::Multiple => {
            if calls.len() != answers.len() || calls.is_empty() {
                return Err("wrong number of functions".into());
            }
            let function = find(functions, expected_name(&answers[0]))
                .ok_or("the expected function is not offered")?;
            check_call(function, &calls[0], &answers[0])
        }
        Checker::Parallel => {
            if calls.len() != answers.len() {
                return Err("wrong number of functions".into());
            }
            let mut matched = vec![false; calls.len()];
            for (i, answer) in answers.iter().enumerate() {
                let function = find(functions, expected_name(answer))
                    .ok_or("an expected function is not offered")?;
                let hit = (0..calls.len())
                    .filter(|&j| !matched[j])
                    .find(|&j| check_call(function, &calls[j], answer).is_ok());
                match hit {
                    Some(j) => matched[j] = true,
                    None => return Err(format!("no call matches expected call {i}")),
                }
            }
            Ok(())
        }
    }
}

/// A task graded by BFCL's AST semantics: its checker, the functions it offers (BFCL's
/// documentation form) and its ground truth. The verdict is the episode's completion; the
/// partial credit ([`CallsRule::partial`]) is ToolRL's decomposition of the same comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct CallsRule {
    pub checker: Checker,
    pub functions: Vec<Value>,
    /// One `{name: {param: [acceptable values]}}` per expected call.
    pub answers: Vec<Map<String, Value>>,
}

/// ToolRL's decomposition of a comparison of calls with the expected ones, each part in [0, 1].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Partial {
    /// Jaccard similarity of the multisets of function names called and expected.
    pub names: f64,
    /// Over the expected calls: Jaccard similarity of the parameter names of the call matched
    /// to it (a left-out parameter that may be left out counts as present); 0 when unmatched.
    pub params: f64,
    /// Over the expected calls' parameters: the share given an acceptable value (or left out
    /// where that is allowed) by the call matched to their call.
    pub values: f64,
}

/// The first acceptable value of a list of them that is not the "may be left out" marker.
fn first_of(accepted: &Value) -> Option<&Value> {
    match accepted {
        Value::Array(a) => first_value(a),
        other => Some(other),
    }
}

/// A dict's keys, each with its first acceptable value (a key that may only be left out,
/// left out): the checker reads a dict answer's values as lists of acceptable ones.
fn first_in_dict(answer: &Value) -> Value {
    match answer {
        Value::Object(o) => Value::Object(
            o.iter()
                .filter_map(|(k, accepted)| Some((k.clone(), first_of(accepted)?.clone())))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// A parameter's first acceptable value written as a value: a dict's (or a list of dicts')
/// inner acceptable values reduced to their first.
fn first_inside(v: &Value, documented: &str, list_of_dicts: bool) -> Value {
    match (documented, v) {
        ("dict", Value::Object(_)) => first_in_dict(v),
        ("array" | "tuple", Value::Array(items)) if list_of_dicts => {
            Value::Array(items.iter().map(first_in_dict).collect())
        }
        _ => v.clone(),
    }
}

impl CallsRule {
    /// BFCL's verdict on `calls`: `Ok` when right, else the first reason it is not.
    pub fn verdict(&self, calls: &[DecodedCall]) -> Result<(), String> {
        check(self.checker, &self.functions, calls, &self.answers)
    }

    /// The expected calls with the first acceptable value of each parameter (a parameter whose
    /// only acceptable value is `""` left out): the gold calls a demonstration writes.
    pub fn first_acceptable(&self) -> Vec<DecodedCall> {
        self.answers
            .iter()
            .filter_map(|answer| {
                let (name, params) = answer.iter().next()?;
                let detail = find(&self.functions, name)
                    .map(|f| f["parameters"]["properties"].clone())
                    .unwrap_or(Value::Null);
                let mut args = Map::new();
                for (param, accepted) in params.as_object()? {
                    if let Some(v) = first_of(accepted) {
                        let documented = detail[param]["type"].as_str().unwrap_or_default();
                        let nested = detail[param]["items"]["type"] == "dict";
                        args.insert(param.clone(), first_inside(v, documented, nested));
                    }
                }
                Some((name.clone(), Value::Object(args)))
            })
            .collect()
    }

    /// Parameter-name and value credit of `call` against `answer` (one expected call).
    fn credit(&self, call: &DecodedCall, answer: &Map<String, Value>) -> (f64, f64) {
        let (Some((name, Value::Object(expected))), true) =
            (answer.iter().next(), answer.len() == 1)
        else {
            return (0.0, 0.0);
        };
        if &call.0 != name {
            return (0.0, 0.0);
        }
        let empty = Map::new();
        let given = call.1.as_object().unwrap_or(&empty);
        let detail = find(&self.functions, name)
            .map(|f| f["parameters"]["properties"].clone())
            .unwrap_or(Value::Null);
        let mut union = given.len();
        let mut common = 0;
        let mut right = 0;
        for (param, accepted) in expected {
            let value_ok = match given.get(param) {
                Some(v) => {
                    common += 1;
                    check_value(param, &detail[param], v, accepted).is_ok()
                }
                None if may_leave_out(accepted) => {
                    common += 1;
                    union += 1;
                    true
                }
                None => {
                    union += 1;
                    false
                }
            };
            right += usize::from(value_ok);
        }
        let params = if union == 0 {
            1.0
        } else {
            common as f64 / union as f64
        };
        let values = if expected.is_empty() {
            1.0
        } else {
            right as f64 / expected.len() as f64
        };
        (params, values)
    }

    /// ToolRL's partial credit of `calls`: names, then each expected call matched greedily (in
    /// order) to the unmatched call of its name that earns the most. With no expected call
    /// (irrelevance) every part is 1 without calls and 0 with any.
    pub fn partial(&self, calls: &[DecodedCall]) -> Partial {
        if self.answers.is_empty() {
            let none = if calls.is_empty() { 1.0 } else { 0.0 };
            return Partial {
                names: none,
                params: none,
                values: none,
            };
        }
        let expected: Vec<&str> = self.answers.iter().map(expected_name).collect();
        let mut used = vec![false; expected.len()];
        let mut common = 0;
        for (name, _) in calls {
            if let Some(i) = (0..expected.len()).find(|&i| !used[i] && expected[i] == name) {
                used[i] = true;
                common += 1;
            }
        }
        let names = common as f64 / (calls.len() + expected.len() - common) as f64;
        let mut taken = vec![false; calls.len()];
        let (mut params, mut values) = (0.0, 0.0);
        for answer in &self.answers {
            let best = (0..calls.len())
                .filter(|&j| !taken[j])
                .map(|j| (j, self.credit(&calls[j], answer)))
                .filter(|(_, (p, v))| p + v > 0.0)
                .max_by(|a, b| (a.1 .0 + a.1 .1).total_cmp(&(b.1 .0 + b.1 .1)));
            if let Some((j, (p, v))) = best {
                taken[j] = true;
                params += p;
                values += v;
            }
        }
        let n = self.answers.len() as f64;
        Partial {
            names,
            params: params / n,
            values: values / n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(checker: Checker) -> CallsRule {
        let function = |name: &str| {
            json!({"name": name, "parameters": {"type": "dict", "properties": {
                "city": {"type": "string"}, "days": {"type": "integer"},
                "unit": {"type": "string"}}, "required": ["city", "days"]}})
        };
        CallsRule {
            checker,
            functions: vec![function("weather"), function("tides")],
            answers: vec![
                json!({"weather": {"city": ["Paris", "Paris, France"], "days": [3], "unit": ["", "celsius"]}})
                    .as_object()
                    .unwrap()
                    .clone(),
                json!({"tides": {"city": ["Brest"], "days": [1], "unit": [""]}})
                    .as_object()
                    .unwrap()
                    .clone(),
            ],
        }
    }

    #[test]
    fn the_first_acceptable_values_are_right_and_earn_full_partial_credit() {
        let r = rule(Checker::Parallel);
        let gold = r.first_acceptable();
        assert_eq!(
            gold,
            vec![
                (
                    "weather".into(),
                    json!({"city": "Paris", "days": 3, "unit": "celsius"})
                ),
                ("tides".into(), json!({"city": "Brest", "days": 1})),
            ]
        );
        assert_eq!(r.verdict(&gold), Ok(()));
        let reversed: Vec<_> = gold.iter().rev().cloned().collect();
        assert_eq!(r.verdict(&reversed), Ok(()));
        let p = r.partial(&reversed);
        assert_eq!((p.names, p.params, p.values), (1.0, 1.0, 1.0));
    }

    #[test]
    fn partial_credit_separates_names_parameters_and_values() {
        let r = rule(Checker::Parallel);
        // The right functions; one value wrong; one required parameter missing.
        let calls = vec![
            ("weather".to_string(), json!({"city": "paris", "days": 4})),
            ("tides".to_string(), json!({"city": "Brest"})),
        ];
        assert!(r.verdict(&calls).is_err());
        let p = r.partial(&calls);
        assert_eq!(p.names, 1.0);
        // weather: {city, days, unit(optional, left out)} all present → 1; tides: city, unit
        // present of {city, days, unit} → 2/3.
        assert!((p.params - (1.0 + 2.0 / 3.0) / 2.0).abs() < 1e-12, "{p:?}");
        // weather: city (standardised), unit right, days wrong → 2/3; tides: 2/3.
        assert!((p.values - 2.0 / 3.0).abs() < 1e-12, "{p:?}");
        // A wrong function and an extra call: names 1 of 3 in the union.
        let calls = vec![
            ("weather".to_string(), json!({"city": "Paris", "days": 3})),
            ("radar".to_string(), json!({})),
        ];
        let p = r.partial(&calls);
        assert!((p.names - 1.0 / 3.0).abs() < 1e-12, "{p:?}");
        assert_eq!(p.values, 0.5);
        // No call at all earns nothing; with no expected call, no call earns everything.
        assert_eq!(r.partial(&[]), Partial::default());
        let irrelevance = CallsRule {
            checker: Checker::Irrelevance,
            answers: vec![],
            ..r
        };
        assert_eq!(irrelevance.partial(&[]).values, 1.0);
        assert_eq!(irrelevance.partial(&calls).names, 0.0);
    }
}
