//! Environments: what produces rewards for the actors' samples.
//!
//! The bandit ([`bandit`]) is tabular. Sequence tasks meet the rest of the trainer through
//! three boundaries, which today's five tool-use families ([`tool_use`]) implement and user
//! datasets, external tools and chat protocols implement too:
//! - a [`TaskSource`] produces items: the prompt text, the tools offered with their JSON
//!   schemas, the gold calls and the gold answer;
//! - a [`ToolSet`] executes calls;
//! - a [`Protocol`] turns what the policy writes into calls and an answer, and feeds tool results
//!   back as forced tokens, masked out of the loss ([`ProtocolEpisode`]).
pub mod bandit;
pub mod tool_use;

use serde::{Deserialize, Serialize};

pub use bandit::Bandit;

use crate::env::tool_use::reward::{Attempt, Call, Gold};
use crate::ids::PromptId;

/// Which part of a task source an item comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    Train,
    Heldout,
}

/// A tool offered to the policy, as function-calling APIs describe one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// JSON schema of the arguments object.
    pub parameters: serde_json::Value,
}

/// A user turn after the first in a multi-turn task: the user's messages (OpenAI form) and
/// the tools first offered at this turn (BFCL's `miss_func`: functions held back until now).
#[derive(Debug, Clone, PartialEq)]
pub struct UserTurn {
    pub messages: Vec<serde_json::Value>,
    pub added_tools: Vec<ToolSpec>,
}

/// Produces the items of a task: what the policy is asked and what would be right.
pub trait TaskSource: Send + Sync {
    type Item: Clone + Send + Sync + std::fmt::Debug;

    /// The train-split item an actor draws for prompt `id` (its own stream, [`crate::ids`]).
    fn prompt_item(&self, id: &PromptId) -> Self::Item;
    /// Item `index` of `split`: evaluation and demonstrations.
    fn item(&self, split: Split, index: u64) -> Self::Item;
    /// The prompt text.
    fn prompt(&self, item: &Self::Item) -> String;
    /// The prompt as a chat user message (natural language); the prompt text by default.
    fn question(&self, item: &Self::Item) -> String {
        self.prompt(item)
    }
    /// The tools offered with `item`.
    fn tools(&self, item: &Self::Item) -> Vec<ToolSpec>;
    /// Gold calls and answer; `None` when the item has no answer.
    fn gold(&self, item: &Self::Item) -> Option<Gold>;
    /// What a run's summary calls this source (a task family's name, `dataset`).
    fn name(&self) -> String;
    /// Items in `split` when the source holds a fixed list (a dataset); `None` when items are
    /// generated, as many as asked for.
    fn split_len(&self, _split: Split) -> Option<usize> {
        None
    }
    /// The item a scored line is about, from the line's `id` and its prompt text (a dataset
    /// looks the id up; the built-in families read the prompt); an error names what is wrong.
    fn locate(
        &self,
        id: Option<&serde_json::Value>,
        prompt: &str,
    ) -> std::result::Result<Self::Item, String>;
    /// Whether the item's tools are call-only: the calls it makes are graded, not run, and the
    /// episode ends with the assistant's turn (BFCL's single-turn tasks).
    fn call_only(&self, _item: &Self::Item) -> bool {
        false
    }
    /// The conversation an item opens with, as OpenAI messages (a system message of its own
    /// and the user's), when it brings one; `None`: the question alone ([`TaskSource::question`]).
    fn messages(&self, _item: &Self::Item) -> Option<Vec<serde_json::Value>> {
        None
    }
    /// The id an item has in its source's files, if it has one (written beside an evaluated
    /// episode, so that `asymre score` finds the task again).
    fn item_id(&self, _item: &Self::Item) -> Option<String> {
        None
    }
    /// The user turns that follow the first one, in order (none: a single-turn task). Each is
    /// shown, masked out of the loss, when the assistant ends a turn without a call.
    fn later_turns(&self, _item: &Self::Item) -> Vec<UserTurn> {
        Vec::new()
    }
}

/// A scripted demonstration: the whole sequence, prompt included, and which tokens the policy
/// writes (the warm start's negative log-likelihood is taken over those).
#[derive(Debug, Clone, PartialEq)]
pub struct Demonstration {
    pub tokens: Vec<u32>,
    pub policy_mask: Vec<bool>,
}

/// Why an item gives no demonstration.
#[derive(Debug, Clone, PartialEq)]
pub enum NoDemonstration {
    /// The item has no gold answer.
    NoGold,
    /// A gold call's tool answered with an error.
    CallFailed { call: String, error: String },
    /// The prompt or a turn cannot be written in the policy's vocabulary.
    Unwritable(String),
    /// Replaying the gold turns did not give the gold calls and answer (`why`).
    Replay(String),
    /// The episode reached its length limits before the demonstration ended.
    TooLong,
}

impl NoDemonstration {
    /// A short name for counting reasons.
    pub fn reason(&self) -> &'static str {
        match self {
            NoDemonstration::NoGold => "no gold answer",
            NoDemonstration::CallFailed { .. } => "a gold call failed",
            NoDemonstration::Unwritable(_) => "not writable in the vocabulary",
            NoDemonstration::Replay(_) => "replay differs from the gold",
            NoDemonstration::TooLong => "longer than the episode's limits",
        }
    }
}

impl std::fmt::Display for NoDemonstration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoDemonstration::NoGold => write!(f, "the item has no gold answer"),
            NoDemonstration::CallFailed { call, error } => {
                write!(f, "the gold call {call} failed: {error}")
            }
            NoDemonstration::Unwritable(why) => write!(f, "cannot be written: {why}"),
            NoDemonstration::Replay(why) => write!(f, "replaying the gold {why}"),
            NoDemonstration::TooLong => write!(
                f,
                "the episode reached env.max_tokens (or env.max_new_tokens) before its end"
            ),
        }
    }
}

/// Executes a call made for `item`: its result, or the error text the policy sees.
pub trait ToolSet<I>: Send + Sync {
    fn execute(&self, item: &I, call: &Call) -> Result<String, String>;

    /// Runs the calls of one decoding step (several episodes' calls) and returns each one's
    /// result, in order. One at a time by default; a tool set whose tools are worker processes
    /// sends each worker its calls together.
    fn execute_batch(&self, calls: &[(&I, &Call)]) -> Vec<Result<String, String>> {
        calls
            .iter()
            .map(|(item, call)| self.execute(item, call))
            .collect()
    }

    /// Starts the episodes of `items`: a tool set with state per episode opens it (a session
    /// in its worker) and returns the items as the episodes carry them, each naming its state.
    /// Stateless tools: the items as they are. An episode whose state cannot be opened still
    /// plays; its calls answer with the error.
    fn begin(&self, items: Vec<I>) -> Vec<I> {
        items
    }

    /// Ends episodes begun by [`ToolSet::begin`]: their state is closed, and where the state
    /// rule grades them ([`crate::env::tool_use::reward::AnswerRule::Turns`]) the verdict is
    /// written into the attempt. An attempt of `None` is an episode that was abandoned (a
    /// decoding error): its state is closed, nothing graded.
    fn end(&self, _ended: Vec<(&I, Option<&mut Attempt>)>) {}
}

/// Turns an item into an episode the policy plays token by token.
pub trait Protocol<T: TaskSource + ToolSet<T::Item>>: Send + Sync {
    type Episode: ProtocolEpisode<T>;

    /// The episode of `item`, its prompt tokens in place; an error when the prompt cannot be
    /// written in the policy's vocabulary.
    fn start(&self, task: &T, item: T::Item) -> crate::error::Result<Self::Episode>;
    /// The longest episode, prompt and forced tokens included.
    fn max_tokens(&self) -> usize;
    /// The scripted demonstration of `item`: its gold calls run for real with `task`'s tools,
    /// then its gold answer, in this protocol's tokens.
    fn demonstration(
        &self,
        task: &T,
        item: &T::Item,
    ) -> std::result::Result<Demonstration, NoDemonstration>;
    /// An episode as one JSON line, in a form `asymre score` reads back.
    fn episode_json(&self, task: &T, episode: &Self::Episode) -> serde_json::Value;
}

/// A sequence being decoded, as the decoding loop sees it: the tokens so far, whether it has
/// ended, the environment's forced tokens, and the policy's next token.
pub trait Decodable: Clone + Send {
    /// The prompt's tokens, then everything written or forced.
    fn tokens(&self) -> &[u32];
    fn done(&self) -> bool;
    /// The next forced token (a tool result), appended masked out, if one is queued.
    fn take_forced(&mut self) -> Option<u32>;
    /// Appends a token the policy chose.
    fn push_token(&mut self, token: u32);
    /// Ends the sequence where it is (a format error when it had not finished).
    fn truncate(&mut self);
}

/// One episode in progress: the tokens so far, who wrote them, and what they amount to.
pub trait ProtocolEpisode<T: TaskSource + ToolSet<T::Item>>: Decodable {
    /// True where the policy chose the token.
    fn policy_mask(&self) -> &[bool];
    fn prompt_len(&self) -> usize;
    /// Calls waiting for their results (empty when none are). The calls a token completes
    /// are not run by [`Decodable::push_token`]: they wait here until
    /// [`ProtocolEpisode::deliver`] brings their results, so that a decoding step can run every
    /// episode's calls together.
    fn pending_calls(&self) -> &[Call];
    /// The results of [`ProtocolEpisode::pending_calls`], in order: queued as forced tokens
    /// (unless the episode has ended) and recorded in the attempt.
    fn deliver(&mut self, results: Vec<Result<String, String>>);
    /// Appends a token the policy chose and runs the calls it completes with `tools`.
    fn push_policy(&mut self, token: u32, tools: &T) {
        self.push_token(token);
        if self.pending_calls().is_empty() {
            return;
        }
        let results = {
            let item = self.item();
            let calls: Vec<(&T::Item, &Call)> =
                self.pending_calls().iter().map(|c| (item, c)).collect();
            tools.execute_batch(&calls)
        };
        self.deliver(results);
    }
    /// The calls, results, answer and format errors so far.
    fn attempt(&self) -> &Attempt;
    /// The attempt, for the tools' verdict at the end ([`ToolSet::end`]).
    fn attempt_mut(&mut self) -> &mut Attempt;
    fn item(&self) -> &T::Item;
}
