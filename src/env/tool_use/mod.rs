//! Verifiable tool-use tasks (SPEC §3.2 to §3.5): the token [`protocol`] over the 60-word
//! vocabulary ([`crate::text::words`]) and an LM's chat format (`protocol::chat`), the task
//! families with their tools ([`tasks`]), the verifiable rewards ([`reward`]), one call's JSON
//! form ([`calls`]), scoring any model's JSON lines with the same rewards ([`json`]), users' own
//! tasks ([`dataset`]) with the tools of `[[tools]]` ([`toolbox`]) run as external programs
//! ([`external`]), BFCL's categories and checker ([`bfcl`]), and stateful multi-turn tasks whose
//! tools keep a state per episode ([`stateful`]).
pub mod bfcl;
pub mod calls;
pub mod dataset;
pub mod external;
pub mod json;
pub mod protocol;
pub mod reward;
pub mod stateful;
pub mod tasks;
pub mod toolbox;

pub use json::{score_line, ScoreTotals};
