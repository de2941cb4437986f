//! Verifiable tool-use tasks (SPEC §3.2): the episode [`protocol`] over the 60-word vocabulary
//! ([`crate::text::words`]), the task
//! families with their tools ([`tasks`]), the verifiable rewards ([`reward`]), and the JSON
//! function-call form external models write ([`json`]: episodes render to it, and such lines are
//! scored with the same rewards), users' own tasks ([`dataset`]) and tools run as external
//! programs ([`external`]).
pub mod bfcl;
pub mod calls;
pub mod dataset;
pub mod external;
pub mod json;
pub mod protocol;
pub mod reward;
pub mod tasks;
pub mod toolbox;

pub use json::{score_jsonl, score_line, ScoreTotals};
pub use protocol::episode_json;
