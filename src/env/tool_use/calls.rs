//! One call in the common JSON function-call form: `{"name": …, "arguments": {…}}` written
//! and read, and OpenAI Chat Completions' `tool_calls` entries read. The chat protocol reads the
//! calls a policy writes with it; [`super::json`] reads the calls of scored lines.
use serde_json::{json, Map, Value};

use super::reward::Call;

/// A call as `{"name": …, "arguments": {…}}`, integer-looking values as JSON numbers.
pub fn call_json(call: &Call) -> Value {
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

pub use super::reward::RawCall;

/// Reads a call in either common form: `{"name": …, "arguments": {…}}` (arguments may also be a
/// JSON string), or OpenAI Chat Completions' `{"id": …, "type": "function", "function":
/// {"name": …, "arguments": "<JSON string>"}}`, keeping its values as written (arrays and
/// objects included). Unknown keys are errors.
pub fn raw_call(v: &Value) -> Result<RawCall, String> {
    let obj = v.as_object().ok_or("a call must be a JSON object")?;
    if let Some(function) = obj.get("function") {
        for key in obj.keys() {
            if !["id", "type", "function", "index"].contains(&key.as_str()) {
                return Err(format!("unknown key {key:?} in a tool call"));
            }
        }
        match obj.get("type") {
            None => {}
            Some(Value::String(t)) if t == "function" => {}
            Some(other) => return Err(format!("a tool call of type {other} (only \"function\")")),
        }
        return raw_call(function);
    }
    for key in obj.keys() {
        if !["name", "arguments"].contains(&key.as_str()) {
            return Err(format!("unknown key {key:?} in a call"));
        }
    }
    let name = obj
        .get("name")
        .and_then(Value::as_str)
        .ok_or("a call needs a string \"name\"")?;
    let args = match obj.get("arguments") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(Value::String(s)) if s.trim().is_empty() => Map::new(),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(m)) => m,
            _ => return Err("\"arguments\" is a string that is not a JSON object".into()),
        },
        Some(_) => return Err("\"arguments\" must be an object".into()),
    };
    Ok((name.to_string(), Value::Object(args)))
}

/// A call of `name` with arguments `args` compared in canonical text: a string as it is, a
/// number or boolean as written, an array or object as its compact JSON.
pub fn call_of(name: &str, args: &Value) -> Call {
    Call::from_json(name, args)
}

/// Reads a call in either common form ([`raw_call`]) whose argument values are strings,
/// numbers or booleans (the built-in tools' kinds); an array or object value is an error.
pub fn parse_call_json(v: &Value) -> Result<Call, String> {
    let (name, args) = raw_call(v)?;
    if let Some((k, other)) = args
        .as_object()
        .into_iter()
        .flatten()
        .find(|(_, v)| v.is_array() || v.is_object() || v.is_null())
    {
        return Err(format!("argument {k:?} has a non-scalar value {other}"));
    }
    Ok(call_of(&name, &args))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn both_common_forms_read_to_the_same_call() {
        let plain = serde_json::json!({"name": "mul", "arguments": {"a": 3, "b": "4"}});
        let openai = serde_json::json!({"id": "c1", "type": "function",
            "function": {"name": "mul", "arguments": "{\"a\": 3, \"b\": \"4\"}"}});
        let (a, b) = (
            parse_call_json(&plain).unwrap(),
            parse_call_json(&openai).unwrap(),
        );
        assert_eq!(a, b);
        assert_eq!(
            call_json(&a),
            serde_json::json!({"name": "mul", "arguments": {"a": 3, "b": 4}})
        );
        for bad in [
            serde_json::json!(3),
            serde_json::json!({"name": 3}),
            serde_json::json!({"name": "f", "extra": 1}),
            serde_json::json!({"name": "f", "arguments": "[1]"}),
            serde_json::json!({"name": "f", "arguments": {"x": [1]}}),
            serde_json::json!({"type": "code", "function": {"name": "f"}}),
        ] {
            assert!(parse_call_json(&bad).is_err(), "{bad}");
        }
    }

    /// Arbitrary JSON (nested, strings of anything) gives a call or an error, never a panic.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            ".{0,12}".prop_map(Value::from),
            prop_oneof![
                Just("name"),
                Just("arguments"),
                Just("function"),
                Just("type")
            ]
            .prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::vec(
                    (
                        prop_oneof![
                            Just("name".to_string()),
                            Just("arguments".to_string()),
                            Just("function".to_string()),
                            Just("type".to_string()),
                            ".{0,6}"
                        ],
                        inner
                    ),
                    0..4,
                )
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn prop_any_json_reads_without_panic(v in json_value()) {
            let _ = parse_call_json(&v);
        }
    }
}
