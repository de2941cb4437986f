//! `[[tools]]`: the tools a dataset's tasks may call (SPEC §3.4), each a built-in implementation
//! or an external program speaking JSON lines ([`crate::env::tool_use::external`]); the entry's
//! type is the toolbox's ([`ToolConfig`]), checked here.
use super::Result;
pub use crate::env::tool_use::toolbox::{ToolConfig, BUILTINS};
use crate::error::Error;

/// Checks `[[tools]]`: unique names, exactly one implementation each, known built-ins, object
/// schemas, positive timeouts.
pub fn validate(tools: &[ToolConfig]) -> Result<()> {
    for (i, t) in tools.iter().enumerate() {
        let at = |what: &str| Error::input(format!("tools[{i}] ({:?}): {what}", t.name));
        let name_ok = !t.name.is_empty()
            && t.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
        if !name_ok {
            return Err(at("name must be non-empty: letters, digits, _ - ."));
        }
        if tools[..i].iter().any(|u| u.name == t.name) {
            return Err(at("name is used twice"));
        }
        match (&t.builtin, &t.command) {
            (Some(b), None) if BUILTINS.contains(&b.as_str()) => {}
            (Some(b), None) => {
                return Err(at(&format!(
                    "unknown builtin {b:?} (one of {})",
                    BUILTINS.join(", ")
                )))
            }
            (None, Some(c)) if !c.is_empty() && !c[0].is_empty() => {}
            (None, Some(_)) => return Err(at("command must name a program")),
            (Some(_), Some(_)) => return Err(at("give builtin or command, not both")),
            (None, None) => return Err(at("needs builtin or command")),
        }
        let schema_ok = t.parameters.get("type").and_then(|v| v.as_str()) == Some("object")
            && t.parameters.get("properties").is_none_or(|p| p.is_object());
        if !schema_ok {
            return Err(at(
                "parameters must be a JSON schema of type \"object\" (with \"properties\")",
            ));
        }
        if t.timeout_ms == 0 {
            return Err(at("timeout_ms must be >= 1"));
        }
    }
    Ok(())
}
