//! The calls rule against BFCL's own checker: for every supported category, the gold calls and
//! perturbations of them (a value changed, a required parameter left out, an extra one, the
//! wrong function, a parallel call dropped or the calls reordered, strings in other case and
//! punctuation, an integer for a float and a float for an integer, an optional parameter left
//! out) are graded by `asymre`'s checker and by `ast_checker.py` from the installed `bfcl-eval`
//! (run by the `.venv` Python, its model registry stubbed); every verdict must be equal.
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use asymre::env::tool_use::bfcl::check::{check, DecodedCall};
use asymre::env::tool_use::bfcl::{data_dir, load, Entry, CATEGORIES};
use serde_json::{json, Map, Value};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The first acceptable value of each parameter (a parameter whose only one is `""` left out).
fn gold_call(answer: &Map<String, Value>) -> DecodedCall {
    let (name, params) = answer.iter().next().expect("one call");
    let mut args = Map::new();
    for (param, accepted) in params.as_object().expect("parameters") {
        let first = accepted
            .as_array()
            .and_then(|a| a.iter().find(|v| *v != &json!("")))
            .cloned();
        if let Some(v) = first {
            args.insert(param.clone(), v);
        }
    }
    (name.clone(), Value::Object(args))
}

/// A value changed so that it should no longer be acceptable.
fn changed(v: &Value) -> Value {
    match v {
        Value::Number(n) if n.is_f64() => json!(n.as_f64().unwrap() * 1.5 + 1.0),
        Value::Number(n) => json!(n.as_i64().unwrap_or(0) + 7),
        Value::String(s) => json!(format!("{s}zq")),
        Value::Bool(b) => json!(!b),
        Value::Array(a) if !a.is_empty() => Value::Array(a[..a.len() - 1].to_vec()),
        Value::Array(_) => json!(["zq"]),
        Value::Object(o) => {
            let mut o = o.clone();
            o.insert("zq".into(), json!(1));
            Value::Object(o)
        }
        Value::Null => json!("zq"),
    }
}

/// Strings in upper case with spaces and BFCL's ignored punctuation added.
fn restyled(v: &Value) -> Value {
    match v {
        Value::String(s) => json!(format!(
            " -{}^*/. ",
            s.to_uppercase().replace(' ', "_").replace('"', "'")
        )),
        Value::Array(a) => Value::Array(a.iter().map(restyled).collect()),
        other => other.clone(),
    }
}

/// Every perturbation of the gold calls of `e`, with a name.
fn cases(e: &Entry) -> Vec<(String, Vec<DecodedCall>)> {
    if e.answers.is_empty() {
        let name = e
            .functions
            .first()
            .and_then(|f| f["name"].as_str())
            .unwrap_or("f")
            .to_string();
        return vec![
            ("no call".into(), vec![]),
            ("a call".into(), vec![(name, json!({}))]),
        ];
    }
    let gold: Vec<DecodedCall> = e.answers.iter().map(gold_call).collect();
    let mut out = vec![("gold".to_string(), gold.clone())];
    let mut each = |what: &str, f: &dyn Fn(&mut Map<String, Value>, &Value) -> bool| {
        let mut calls = gold.clone();
        let mut touched = false;
        for (call, answer) in calls.iter_mut().zip(&e.answers) {
            let args = call.1.as_object_mut().unwrap();
            let function = e
                .functions
                .iter()
                .find(|f| answer.contains_key(f["name"].as_str().unwrap_or_default()))
                .cloned()
                .unwrap_or(Value::Null);
            if f(args, &function) {
                touched = true;
                break;
            }
        }
        if touched {
            out.push((what.to_string(), calls));
        }
    };
    each("value changed", &|args, _| match args.iter_mut().next() {
        Some((_, v)) => {
            *v = changed(v);
            true
        }
        None => false,
    });
    each("required left out", &|args, f| {
        let required: Vec<String> = f["parameters"]["required"]
            .as_array()
            .map(|r| {
                r.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        required.iter().any(|r| args.remove(r).is_some())
    });
    each("extra parameter", &|args, _| {
        args.insert("zq_extra".into(), json!(1));
        true
    });
    each("strings restyled", &|args, _| {
        let mut any = false;
        for v in args.values_mut() {
            if v.is_string() || v.as_array().is_some_and(|a| a.iter().any(Value::is_string)) {
                *v = restyled(v);
                any = true;
            }
        }
        any
    });
    each("int for float", &|args, f| {
        for (k, v) in args.iter_mut() {
            let is_float = f["parameters"]["properties"][k.as_str()]["type"] == "float";
            if let Some(x) = v
                .as_f64()
                .filter(|x| is_float && x.fract() == 0.0 && x.abs() < 1e12)
            {
                *v = json!(x as i64);
                return true;
            }
        }
        false
    });
    each("float for int", &|args, _| {
        for v in args.values_mut() {
            if let Some(i) = v.as_i64().filter(|_| !v.is_f64()) {
                *v = json!(i as f64);
                return true;
            }
        }
        false
    });
    each("bool for value", &|args, _| match args.iter_mut().next() {
        Some((_, v)) => {
            *v = json!(true);
            true
        }
        None => false,
    });
    each("optional left out", &|args, f| {
        let required: Vec<&str> = f["parameters"]["required"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let optional = args
            .keys()
            .find(|k| !required.contains(&k.as_str()))
            .cloned();
        optional.is_some_and(|k| args.remove(&k).is_some())
    });
    let mut wrong = gold.clone();
    wrong[0].0.push_str("_zq");
    out.push(("wrong function".into(), wrong));
    if gold.len() > 1 {
        out.push(("a call dropped".into(), gold[1..].to_vec()));
        let mut reversed = gold.clone();
        reversed.reverse();
        out.push(("calls reordered".into(), reversed));
    }
    out
}

#[test]
fn the_calls_rule_agrees_with_bfcls_checker_on_every_category() {
    let python = root().join(".venv/bin/python");
    let dir = data_dir().expect("bfcl-eval is installed by scripts/setup.sh (make test runs it)");
    let mut input = String::new();
    let mut ours: Vec<(String, String, bool, String)> = Vec::new();
    for category in CATEGORIES {
        let entries = load(&dir, category).unwrap();
        let before = ours.len();
        for e in &entries {
            for (what, calls) in cases(e) {
                let verdict = check(e.checker(), &e.functions, &calls, &e.answers);
                let output: Vec<Value> =
                    calls.iter().map(|(n, a)| json!({ n.clone(): a })).collect();
                let line = json!({"category": category, "function": e.functions,
                    "output": output, "answer": e.answers});
                input.push_str(&line.to_string());
                input.push('\n');
                ours.push((
                    e.id.clone(),
                    what,
                    verdict.is_ok(),
                    verdict.err().unwrap_or_default(),
                ));
            }
        }
        let n = ours.len() - before;
        assert!(n >= 30, "{category}: only {n} cases");
        eprintln!("{category}: {} tasks, {n} cases", entries.len());
    }
    let mut child = Command::new(&python)
        .arg(root().join("scripts/reference/bfcl_check.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the .venv Python runs");
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(theirs.len(), ours.len());
    let mut disagree = Vec::new();
    let (mut valid, mut invalid) = (0, 0);
    for ((id, what, ok, why), t) in ours.iter().zip(&theirs) {
        let their_ok = t["valid"].as_bool().unwrap();
        if *ok != their_ok {
            disagree.push(format!(
                "{id} ({what}): ours {ok} ({why}), BFCL {their_ok} ({})",
                t["error_type"]
            ));
        }
        if their_ok {
            valid += 1
        } else {
            invalid += 1
        }
    }
    eprintln!(
        "{} cases: BFCL says {valid} right, {invalid} wrong",
        ours.len()
    );
    assert!(
        disagree.is_empty(),
        "{} of {} verdicts differ:\n{}",
        disagree.len(),
        ours.len(),
        disagree[..disagree.len().min(40)].join("\n")
    );
    // Both kinds of verdict are exercised.
    assert!(
        valid > 1_000 && invalid > 1_000,
        "{valid} right, {invalid} wrong"
    );
}
