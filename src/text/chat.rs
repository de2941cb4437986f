//! Chat templates: a model's Jinja template rendered with `minijinja` under Hugging Face's
//! semantics (`trim_blocks`, `lstrip_blocks`, loop controls, `raise_exception`, Python string and
//! dict methods, and a `tojson` that writes what Python's `json.dumps` writes, unescaped).
use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, ErrorKind};
use serde_json::Value as Json;

use crate::error::{Error, Result};

/// The most work one render may do, in minijinja's fuel: an instruction costs one, and 64 bytes
/// of text created or written cost one. A real template renders a prompt with a few thousand.
const TEMPLATE_FUEL: u64 = 4_000_000;

/// The largest `tojson` indent, separator and text a template may ask for (its own text is
/// charged to the fuel only once it is returned; the value it serialises was charged already).
const MAX_INDENT: usize = 64;
const MAX_SEPARATOR: usize = 16;
const MAX_TOJSON: usize = 64 << 20;

/// A model's chat template with the special tokens it may refer to.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    pub source: String,
    pub bos_token: String,
    pub eos_token: String,
}

/// One message: `role` (system, user, assistant, tool), `content`, and whatever else the
/// template reads (`tool_calls`, `name`, …).
pub type Message = Json;

impl ChatTemplate {
    /// Renders `messages` (and `tools`, JSON schemas, when given); with
    /// `add_generation_prompt`, ends with the opening of the assistant's turn.
    pub fn render(
        &self,
        messages: &[Message],
        tools: Option<&[Json]>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .expect("the default delimiters");
        env.set_syntax(syntax);
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<Value, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_function("strftime_now", |fmt: String| -> String {
            strftime_now(&fmt)
        });
        env.add_filter("tojson", tojson);
        // A template comes with a model's files, which the user did not write: bound the work
        // and the memory one render may take (instructions, and the bytes it creates or writes).
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.add_template("chat", &self.source)
            .map_err(|e| Error::input(format!("chat template: {e}")))?;
        let tmpl = env.get_template("chat").expect("just added");
        let ctx = minijinja::context! {
            messages => Value::from(minijinja::value::Serde(messages)),
            tools => tools.map(|t| Value::from(minijinja::value::Serde(t))),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.clone(),
            eos_token => self.eos_token.clone(),
        };
        tmpl.render(ctx).map_err(|e| {
            if e.kind() == ErrorKind::OutOfFuel {
                return Error::input(format!(
                    "chat template: stopped after {TEMPLATE_FUEL} units of work (about {} MB of text): it renders far more than any prompt",
                    (TEMPLATE_FUEL * 64) >> 20
                ));
            }
            let detail = e
                .detail()
                .map(str::to_string)
                .unwrap_or_else(|| e.to_string());
            Error::input(format!("chat template: {detail}"))
        })
    }
}

/// Today's date for templates that print it (Llama 3's); `%d %b %Y` and the common fields.
fn strftime_now(fmt: &str) -> String {
    let now = crate::clock::now_utc();
    let (y, m, d) = (now.year, now.month, now.day);
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    const FULL: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    fmt.replace("%d", &format!("{d:02}"))
        .replace("%m", &format!("{m:02}"))
        .replace("%Y", &y.to_string())
        .replace("%b", MONTHS[(m - 1) as usize])
        .replace("%B", FULL[(m - 1) as usize])
}

/// Jinja's `tojson` as transformers defines it: `json.dumps(x, ensure_ascii=False,
/// indent=indent, separators=separators, sort_keys=sort_keys)`.
fn tojson(value: Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    // The filter's own output is charged only once it is returned: bound what it can build.
    let too_big = |what: &str| minijinja::Error::new(ErrorKind::InvalidOperation, what.to_string());
    if indent.is_some_and(|n| n > MAX_INDENT) {
        return Err(too_big(&format!("tojson: indent above {MAX_INDENT}")));
    }
    if separators
        .as_ref()
        .is_some_and(|s| s.iter().any(|x| x.len() > MAX_SEPARATOR))
    {
        return Err(too_big(&format!(
            "tojson: a separator longer than {MAX_SEPARATOR}"
        )));
    }
    let json: Json = serde_json::to_value(&value)
        .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    let (item, key) = match &separators {
        Some(s) if s.len() == 2 => (s[0].clone(), s[1].clone()),
        _ => (
            if indent.is_some() { "," } else { ", " }.to_string(),
            ": ".to_string(),
        ),
    };
    let mut out = String::new();
    write_py_json(
        &json,
        &mut out,
        &PyJson {
            indent,
            item,
            key,
            sort_keys: sort_keys.unwrap_or(false),
        },
        0,
    );
    if out.len() > MAX_TOJSON {
        return Err(too_big(&format!(
            "tojson: its text passed {} MiB",
            MAX_TOJSON >> 20
        )));
    }
    Ok(Value::from_safe_string(out))
}

struct PyJson {
    indent: Option<usize>,
    item: String,
    key: String,
    sort_keys: bool,
}

/// `json.dumps` with `ensure_ascii=False`.
pub fn py_dumps(v: &Json) -> String {
    let mut out = String::new();
    let f = PyJson {
        indent: None,
        item: ", ".into(),
        key: ": ".into(),
        sort_keys: false,
    };
    write_py_json(v, &mut out, &f, 0);
    out
}

fn py_float(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    // Python's repr: the shortest round-trip digits, exponent form outside [1e-4, 1e16).
    let a = x.abs();
    if a != 0.0 && !(1e-4..1e16).contains(&a) {
        let s = format!("{x:e}");
        let (m, e) = s.split_once('e').expect("exponent form");
        let e: i32 = e.parse().expect("an exponent");
        return format!("{m}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs());
    }
    let s = format!("{x}");
    if s.contains('.') {
        s
    } else {
        format!("{s}.0")
    }
}

fn write_py_json(v: &Json, out: &mut String, f: &PyJson, depth: usize) {
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = f.indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    match v {
        Json::Null => out.push_str("null"),
        Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Json::Number(n) => {
            if n.is_f64() {
                out.push_str(&py_float(n.as_f64().unwrap_or(0.0)))
            } else {
                out.push_str(&n.to_string())
            }
        }
        Json::String(s) => {
            out.push('"');
            for c in s.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    '\u{8}' => out.push_str("\\b"),
                    '\u{c}' => out.push_str("\\f"),
                    c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                    c => out.push(c),
                }
            }
            out.push('"');
        }
        Json::Array(items) => {
            if items.is_empty() {
                out.push_str("[]");
                return;
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&f.item);
                }
                newline(out, depth + 1);
                write_py_json(item, out, f, depth + 1);
            }
            newline(out, depth);
            out.push(']');
        }
        Json::Object(map) => {
            if map.is_empty() {
                out.push_str("{}");
                return;
            }
            let mut entries: Vec<(&String, &Json)> = map.iter().collect();
            if f.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(b.0));
            }
            out.push('{');
            for (i, (k, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(&f.item);
                }
                newline(out, depth + 1);
                write_py_json(&Json::String(k.clone()), out, f, depth + 1);
                out.push_str(&f.key);
                write_py_json(item, out, f, depth + 1);
            }
            newline(out, depth);
            out.push('}');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tojson_writes_what_python_json_dumps_writes() {
        let v: Json =
            serde_json::from_str(r#"{"b": [1, 2.5, 1e-7, 3.0], "a": "é<x>\n", "c": {}}"#).unwrap();
        assert_eq!(
            py_dumps(&v),
            r#"{"b": [1, 2.5, 1e-07, 3.0], "a": "é<x>\n", "c": {}}"#
        );
    }

    #[test]
    fn raise_exception_is_an_error_with_its_message() {
        let t = ChatTemplate {
            source: "{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}ok".into(),
            bos_token: String::new(),
            eos_token: String::new(),
        };
        let m = vec![serde_json::json!({"role": "system", "content": "x"})];
        let err = t.render(&m, None, false).unwrap_err().to_string();
        assert!(err.contains("first must be user"), "{err}");
        let m = vec![serde_json::json!({"role": "user", "content": "x"})];
        assert_eq!(t.render(&m, None, false).unwrap(), "ok");
    }

    fn template(source: &str) -> ChatTemplate {
        ChatTemplate {
            source: source.into(),
            bos_token: String::new(),
            eos_token: String::new(),
        }
    }

    /// Templates that would render gigabytes, loop without end (nested loops, endless
    /// recursion) or build a huge string in a variable stop with one line, in bounded time and
    /// memory.
    #[test]
    fn hostile_templates_stop_within_bounds() {
        let m = vec![serde_json::json!({"role": "user", "content": "x"})];
        let hostile = [
            // 10 GB written.
            r#"{% for i in range(100000) %}{{ "x" * 100000 }}{% endfor %}"#,
            // 10^10 iterations writing nothing.
            r#"{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"#,
            // A string doubled until it is terabytes, never written.
            r#"{% set ns = namespace(s="xxxxxxxx") %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}ok"#,
            // Endless recursion.
            r#"{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}"#,
        ];
        for source in hostile {
            let err = template(source).render(&m, None, false).unwrap_err();
            let text = err.to_string();
            assert!(text.starts_with("chat template: "), "{source}: {text}");
            assert!(!text.contains('\n'), "one line: {text}");
        }
        // A real template's work is far inside the budget.
        let tools = vec![
            serde_json::json!({"type": "function", "function": {
            "name": "get", "description": "d".repeat(2000), "parameters": {"type": "object"}}});
            50
        ];
        let ok =
            template("{% for t in tools %}{{ t | tojson }}\n{% endfor %}{{ messages[0].content }}");
        assert!(ok.render(&m, Some(&tools), true).unwrap().len() > 100_000);
    }
}
