//! Tool use in a pretrained LM's own chat format (the Hermes / Qwen2.5 convention):
//!
//! ```text
//! <|im_start|>system … <tools>{…json schema…}</tools> …<|im_end|>
//! <|im_start|>user\nWhat is 123 * 45?<|im_end|>
//! <|im_start|>assistant\n<tool_call>\n{"name": "mul", "arguments": {"a": 123, "b": 45}}\n</tool_call><|im_end|>
//! <|im_start|>user\n<tool_response>\n5535\n</tool_response><|im_end|>
//! <|im_start|>assistant\nThe answer is 5535.<|im_end|>
//! ```
//!
//! The tools reach the model through its template's `tools` variable when the template has one,
//! otherwise through a system message listing their JSON schemas inside `<tools></tools>`.
//! When the policy ends its turn (an end-of-turn token) the turn's `<tool_call>` blocks are
//! parsed and executed, and their results come back as forced tokens (masked out of the loss and
//! of log μ): a user turn of `<tool_response>` blocks, then the assistant turn re-opened. Several
//! calls in one turn are allowed. A turn without a call ends the episode; its text is the answer
//! ([`answer_of`]). Token in, token out: what the policy wrote is never re-tokenised.
//!
//! Malformed JSON, an unknown tool, missing, extra or mistyped arguments, a `<tool_call>` left
//! open or opened twice: a format error, with the error's text as that call's response.
use std::collections::VecDeque;
use std::sync::Arc;

use serde_json::{json, Value as Json};

use crate::env::tool_use::calls::{call_of, raw_call, RawCall};
use crate::env::tool_use::protocol::Limits;
use crate::env::tool_use::reward::{AnswerRule, Attempt, Call, Gold};
use crate::env::{
    Decodable, Demonstration, NoDemonstration, Protocol, ProtocolEpisode, TaskSource, ToolSet,
    ToolSpec, UserTurn,
};
use crate::error::{Error, Result};
use crate::text::chat::{py_dumps, ChatTemplate};
use crate::text::hf::HfTokenizer;
use crate::text::ModelText;

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

/// A model's chat format for tool use: its tokenizer, template and turn markers.
pub struct ChatFormat {
    pub tokenizer: HfTokenizer,
    template: ChatTemplate,
    /// The template renders the `tools` variable itself.
    template_tools: bool,
    /// Ids that end the assistant's turn (`<|im_end|>`, the end-of-sequence token).
    end_of_turn: Vec<u32>,
    /// The id the policy writes to end its turn in a demonstration.
    im_end: u32,
}

impl std::fmt::Debug for ChatFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatFormat")
            .field("template_tools", &self.template_tools)
            .field("end_of_turn", &self.end_of_turn)
            .finish()
    }
}

impl ChatFormat {
    /// The chat format of a model's tokenizer and template: a ChatML template
    /// (`<|im_start|>`/`<|im_end|>`), as SmolLM2, Qwen2/2.5/3 and Hermes models use.
    pub fn new(text: ModelText, what: &str) -> Result<Self> {
        let template = text.template.ok_or_else(|| {
            Error::input(format!(
                "{what}: the model has no chat template, and tool use is played in its chat format"
            ))
        })?;
        let tokenizer = text.tokenizer;
        let (Some(_), Some(im_end)) = (
            tokenizer.token_to_id("<|im_start|>"),
            tokenizer.token_to_id("<|im_end|>"),
        ) else {
            return Err(Error::input(format!(
                "{what}: tool use needs a ChatML chat format (<|im_start|>, <|im_end|>), which this model's vocabulary lacks"
            )));
        };
        let mut end_of_turn = tokenizer.stop.clone();
        if !end_of_turn.contains(&im_end) {
            end_of_turn.push(im_end);
        }
        Ok(ChatFormat {
            template_tools: template.source.contains("tools"),
            template,
            tokenizer,
            end_of_turn,
            im_end,
        })
    }

    /// The tools as function-calling APIs list them.
    fn tool_json(tools: &[ToolSpec]) -> Vec<Json> {
        tools
            .iter()
            .map(|t| {
                json!({"type": "function", "function": {
                    "name": t.name, "description": t.description, "parameters": t.parameters,
                }})
            })
            .collect()
    }

    /// The system message that offers `tools` to a template without a `tools` variable.
    fn tool_system(tools: &[ToolSpec]) -> String {
        let mut s = String::from(
            "You are a helpful assistant that can call tools.\n\n\
             The tools are described by these JSON signatures:\n<tools>\n",
        );
        for t in Self::tool_json(tools) {
            s.push_str(&py_dumps(&t));
            s.push('\n');
        }
        s.push_str(
            "</tools>\n\nTo call a tool, write a JSON object with its name and arguments \
             between <tool_call> and </tool_call> tags:\n<tool_call>\n\
             {\"name\": <tool name>, \"arguments\": <arguments object>}\n</tool_call>\n\
             The results come back between <tool_response> and </tool_response> tags. When \
             you know the answer, reply with it in plain text.",
        );
        s
    }

    /// The opening messages of an episode: the tools (unless the template lists them) and the
    /// question.
    pub fn opening(&self, question: &str, tools: &[ToolSpec]) -> Vec<Json> {
        self.opening_of(vec![json!({"role": "user", "content": question})], tools)
    }

    /// The opening of an episode that brings its own messages: the tools' system message
    /// (unless the template lists them) before them, merged with a system message of theirs.
    /// A task that offers no tools gets no tools' system message: its prompt is the question.
    pub fn opening_of(&self, mut messages: Vec<Json>, tools: &[ToolSpec]) -> Vec<Json> {
        if self.template_tools || tools.is_empty() {
            return messages;
        }
        let listed = Self::tool_system(tools);
        match messages.first_mut() {
            Some(first) if first["role"] == "system" => {
                let theirs = first["content"].as_str().unwrap_or_default().to_string();
                first["content"] = Json::from(format!("{listed}\n\n{theirs}"));
            }
            _ => messages.insert(0, json!({"role": "system", "content": listed})),
        }
        messages
    }

    /// The prompt's ids: the opening messages rendered with the generation prompt.
    pub fn prompt_ids(&self, messages: &[Json], tools: &[ToolSpec]) -> Result<Vec<u32>> {
        let listed = (self.template_tools && !tools.is_empty()).then(|| Self::tool_json(tools));
        let text = self.template.render(messages, listed.as_deref(), true)?;
        self.encode(&text)
    }

    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer
            .encode_with(text, false)
            .map_err(|e| Error::input(format!("chat text: {e}")))
    }

    /// What follows the policy's end-of-turn token after a turn of calls: the results as a
    /// user turn of `<tool_response>` blocks, then the assistant's turn re-opened.
    pub fn tool_turn(results: &[String]) -> String {
        let blocks: Vec<String> = results
            .iter()
            .map(|r| format!("<tool_response>\n{r}\n</tool_response>"))
            .collect();
        format!(
            "\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n",
            blocks.join("\n")
        )
    }

    /// What follows the policy's end-of-turn token when the user speaks again: the user's turn
    /// (the tools first offered now listed before it, with BFCL's sentence), then the
    /// assistant's turn re-opened.
    pub fn user_turn(turn: &UserTurn) -> String {
        let mut text: Vec<String> = turn
            .messages
            .iter()
            .filter_map(|m| m["content"].as_str().map(str::to_string))
            .collect();
        if !turn.added_tools.is_empty() {
            let mut listed = String::from("<tools>\n");
            for t in Self::tool_json(&turn.added_tools) {
                listed.push_str(&py_dumps(&t));
                listed.push('\n');
            }
            listed.push_str("</tools>\n");
            listed.push_str(MORE_FUNCTIONS);
            text.insert(0, listed);
        }
        format!(
            "\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n",
            text.join("\n")
        )
    }

    /// Whether `id` ends the assistant's turn.
    pub fn ends_turn(&self, id: u32) -> bool {
        self.end_of_turn.contains(&id)
    }
}

/// What the user says when functions held back so far are offered (BFCL's own sentence).
pub const MORE_FUNCTIONS: &str =
    "I have updated some more functions you can choose from. What about now?";

/// The chat protocol as a [`Protocol`].
#[derive(Debug, Clone)]
pub struct ChatProtocol {
    pub format: Arc<ChatFormat>,
    pub limits: Limits,
}

impl<T: TaskSource + ToolSet<T::Item>> Protocol<T> for ChatProtocol {
    type Episode = ChatEpisode<T::Item>;

    fn start(&self, task: &T, item: T::Item) -> Result<ChatEpisode<T::Item>> {
        let tools: Arc<[ToolSpec]> = task.tools(&item).into();
        let messages = match task.messages(&item) {
            Some(own) => self.format.opening_of(own, &tools),
            None => self.format.opening(&task.question(&item), &tools),
        };
        let call_only = task.call_only(&item);
        let later: VecDeque<UserTurn> = task.later_turns(&item).into();
        let tokens = self.format.prompt_ids(&messages, &tools)?;
        let prompt_len = tokens.len();
        Ok(ChatEpisode {
            item,
            policy_mask: vec![false; prompt_len],
            tokens,
            prompt_len,
            attempt: Attempt::default(),
            done: prompt_len >= self.limits.max_tokens,
            forced: VecDeque::new(),
            turn_start: prompt_len,
            written: 0,
            turns: 0,
            awaiting: None,
            messages,
            format: self.format.clone(),
            tools,
            limits: self.limits,
            call_only,
            multi_turn: !later.is_empty(),
            later,
        })
    }

    fn max_tokens(&self) -> usize {
        self.limits.max_tokens
    }

    fn demonstration(
        &self,
        task: &T,
        item: &T::Item,
    ) -> std::result::Result<Demonstration, NoDemonstration> {
        let (tokens, policy_mask) = demonstration(self, task, item)?;
        Ok(Demonstration {
            tokens,
            policy_mask,
        })
    }

    /// OpenAI's `messages` log, with the task's id when it has one.
    fn episode_json(&self, task: &T, ep: &ChatEpisode<T::Item>) -> Json {
        match task.item_id(&ep.item) {
            Some(id) => json!({ "id": id, "messages": ep.messages }),
            None => json!({ "messages": ep.messages }),
        }
    }
}

/// One chat episode in progress.
#[derive(Debug, Clone)]
pub struct ChatEpisode<I> {
    pub item: I,
    /// The prompt's ids, then everything written or forced.
    pub tokens: Vec<u32>,
    /// True where the policy chose the token.
    pub policy_mask: Vec<bool>,
    pub prompt_len: usize,
    pub attempt: Attempt,
    pub done: bool,
    forced: VecDeque<u32>,
    /// Where the assistant's current turn starts.
    turn_start: usize,
    /// Tokens the policy wrote, and assistant turns it ended.
    written: usize,
    turns: usize,
    /// The calls of the turn that ended, waiting for their results.
    awaiting: Option<Awaiting>,
    /// The conversation so far in OpenAI's `messages` form (calls' `arguments` as JSON text).
    pub messages: Vec<Json>,
    format: Arc<ChatFormat>,
    tools: Arc<[ToolSpec]>,
    limits: Limits,
    /// The calls are graded, not run: the episode ends with the assistant's turn.
    call_only: bool,
    /// The user turns still to come.
    later: VecDeque<UserTurn>,
    /// The task has several user turns.
    multi_turn: bool,
}

impl<I> ChatEpisode<I> {
    /// The next forced token, appended masked out.
    pub fn take_forced(&mut self) -> Option<u32> {
        let t = self.forced.pop_front()?;
        self.tokens.push(t);
        self.policy_mask.push(false);
        if !self.done && self.limits.reached(self.tokens.len(), self.written) {
            self.truncate();
        }
        Some(t)
    }

    /// Ends the episode where it is (a format error when it had not finished); the log keeps
    /// what the policy had written of its turn.
    pub fn truncate(&mut self) {
        if !self.done {
            if self.turn_start < self.tokens.len() && self.forced.is_empty() {
                let text = self
                    .format
                    .tokenizer
                    .decode_with(&self.tokens[self.turn_start..], false);
                self.messages
                    .push(json!({"role": "assistant", "content": text.trim()}));
            }
            self.attempt.format_errors += 1;
            self.done = true;
            self.forced.clear();
        }
    }

    /// Appends a token the policy chose; at the end of a turn, runs its calls with `tools` or
    /// takes its answer.
    pub fn push_policy(&mut self, t: u32, tools: &(impl ToolSet<I> + ?Sized)) {
        self.push_token(t);
        if let Some(turn) = &self.awaiting {
            let results = turn
                .calls
                .iter()
                .map(|c| tools.execute(&self.item, c))
                .collect();
            self.deliver(results);
        }
    }

    /// Appends a token the policy chose; at the end of a turn, takes its answer or parses its
    /// calls, which wait in `awaiting` for [`ChatEpisode::deliver`].
    pub fn push_token(&mut self, t: u32) {
        if self.done {
            return;
        }
        self.tokens.push(t);
        self.policy_mask.push(true);
        self.written += 1;
        if self.format.ends_turn(t) {
            self.end_turn();
        }
        if !self.done && self.limits.reached(self.tokens.len(), self.written) {
            self.truncate();
        }
    }

    /// The calls of the turn that ended, waiting for their results.
    pub fn pending_calls(&self) -> &[Call] {
        self.awaiting.as_ref().map_or(&[], |t| &t.calls)
    }

    fn end_turn(&mut self) {
        let end = self.tokens.len() - 1;
        let text = self
            .format
            .tokenizer
            .decode_with(&self.tokens[self.turn_start..end], false);
        let turn = split_turn(&text);
        self.turns += 1;
        if turn.calls.is_empty() {
            self.attempt.answer = answer_of(&turn.prose);
            // In a conversation of several user turns a reply without a call ends the user's
            // turn; what it says is not graded.
            if self.attempt.answer.is_none() && !self.multi_turn {
                self.attempt.format_errors += 1; // no answer
            }
            self.messages
                .push(json!({"role": "assistant", "content": turn.prose.trim()}));
            if self.multi_turn {
                self.attempt.turn_ends.push(self.attempt.raw_calls.len());
            }
            match self.later.pop_front() {
                Some(next) => self.next_user_turn(next),
                None => self.done = true,
            }
            return;
        }
        if self.call_only {
            self.end_with_calls(&turn);
            return;
        }
        if self.attempt.calls.len() + turn.calls.len() > self.limits.max_calls {
            self.attempt.format_errors += 1;
            self.done = true;
            return;
        }
        let mut waiting = Awaiting::default();
        let mut tool_calls = Vec::new();
        for body in turn.calls {
            match body.and_then(|b| parse_tool_call(&b, &self.tools)) {
                Ok((call, arguments)) => {
                    let args = serde_json::from_str(&arguments).unwrap_or(Json::Null);
                    self.attempt.raw_calls.push((call.name.clone(), args));
                    tool_calls.push(json!({"type": "function", "function": {
                        "name": call.name, "arguments": arguments,
                    }}));
                    waiting.slots.push(Ok(waiting.calls.len()));
                    waiting.calls.push(call);
                }
                Err(e) => waiting.slots.push(Err(e)),
            }
        }
        let mut assistant = json!({"role": "assistant", "content": turn.prose.trim()});
        if !tool_calls.is_empty() {
            assistant["tool_calls"] = Json::Array(tool_calls);
        }
        self.messages.push(assistant);
        if waiting.calls.is_empty() {
            // Nothing to run: the errors answer at once.
            self.awaiting = Some(waiting);
            self.deliver(Vec::new());
        } else {
            self.awaiting = Some(waiting);
        }
    }

    /// The user's next turn, forced; the tools it first offers are offered from now on, and
    /// the assistant's turns and written tokens are counted afresh (`env.max_turns` and
    /// `env.max_new_tokens` are per user turn).
    fn next_user_turn(&mut self, next: UserTurn) {
        if !next.added_tools.is_empty() {
            let mut tools = self.tools.to_vec();
            tools.extend(next.added_tools.iter().cloned());
            self.tools = tools.into();
        }
        let content = ChatFormat::user_turn(&next);
        let shown = content
            .trim_start_matches("\n<|im_start|>user\n")
            .split("<|im_end|>")
            .next()
            .unwrap_or_default();
        self.messages
            .push(json!({"role": "user", "content": shown}));
        self.turns = 0;
        self.written = 0;
        match self.format.encode(&content) {
            Ok(ids) => {
                self.turn_start = self.tokens.len() + ids.len();
                self.forced.extend(ids);
            }
            Err(_) => {
                self.attempt.format_errors += 1;
                self.done = true;
            }
        }
    }

    /// A call-only episode's last turn: every `<tool_call>` that reads as a call's JSON is
    /// recorded as written (its tool, arguments and types are the grader's business, not format
    /// errors); a block that does not read is a format error. Nothing runs; the episode ends.
    fn end_with_calls(&mut self, turn: &Turn) {
        let mut tool_calls = Vec::new();
        for body in &turn.calls {
            match block_call(body) {
                Ok((name, args)) => {
                    tool_calls.push(json!({"type": "function", "function": {
                        "name": name, "arguments": args.to_string(),
                    }}));
                    self.attempt.calls.push(call_of(&name, &args));
                    self.attempt.results.push(None);
                    self.attempt.raw_calls.push((name, args));
                }
                Err(_) => self.attempt.format_errors += 1,
            }
        }
        let mut assistant = json!({"role": "assistant", "content": turn.prose.trim()});
        if !tool_calls.is_empty() {
            assistant["tool_calls"] = Json::Array(tool_calls);
        }
        self.messages.push(assistant);
        self.done = true;
    }

    /// The results of the pending calls: recorded in the attempt and, unless the episode has
    /// ended or this was its last turn, shown as a user turn of `<tool_response>` blocks (the
    /// turn's malformed calls answered by their errors) before the assistant's turn re-opens.
    pub fn deliver(&mut self, results: Vec<Result<String, String>>) {
        let Some(turn) = self.awaiting.take() else {
            return;
        };
        let mut results: Vec<Option<Result<String, String>>> =
            results.into_iter().map(Some).collect();
        let mut calls = turn.calls.into_iter();
        let mut shown = Vec::new();
        for slot in turn.slots {
            let result = match slot {
                Ok(i) => {
                    let r = results
                        .get_mut(i)
                        .and_then(Option::take)
                        .unwrap_or_else(|| Err("no result".into()));
                    if let Some(call) = calls.next() {
                        self.attempt.calls.push(call);
                    }
                    self.attempt.results.push(r.as_ref().ok().cloned());
                    r
                }
                Err(e) => Err(e),
            };
            shown.push(result.unwrap_or_else(|e| {
                self.attempt.format_errors += 1;
                format!("error: {e}")
            }));
        }
        if self.done {
            return;
        }
        if self.turns >= self.limits.max_turns {
            self.done = true; // the calls count; their results are not shown
            return;
        }
        for r in &shown {
            self.messages.push(json!({"role": "tool", "content": r}));
        }
        match self.format.encode(&ChatFormat::tool_turn(&shown)) {
            Ok(ids) => {
                self.turn_start = self.tokens.len() + ids.len();
                self.forced.extend(ids);
            }
            // A result the vocabulary cannot spell ends the episode, never a panic.
            Err(_) => {
                self.attempt.format_errors += 1;
                self.done = true;
            }
        }
    }
}

/// A turn's calls waiting for their results: each `<tool_call>` block in order, as the index
/// of its parsed call or what is wrong with it.
#[derive(Debug, Clone, Default)]
struct Awaiting {
    calls: Vec<Call>,
    slots: Vec<std::result::Result<usize, String>>,
}

/// A turn's text split into its prose and its `<tool_call>` blocks (each the text inside the
/// tags, or what is wrong with it).
struct Turn {
    prose: String,
    calls: Vec<Result<String, String>>,
}

fn split_turn(text: &str) -> Turn {
    let mut prose = String::new();
    let mut calls = Vec::new();
    let mut rest = text;
    loop {
        let open = rest.find(OPEN);
        let close = rest.find(CLOSE);
        match (open, close) {
            (None, None) => {
                prose.push_str(rest);
                break;
            }
            (_, Some(c)) if open.is_none_or(|o| c < o) => {
                prose.push_str(&rest[..c]);
                calls.push(Err(format!("{CLOSE} without an opening {OPEN}")));
                rest = &rest[c + CLOSE.len()..];
            }
            (Some(o), _) => {
                prose.push_str(&rest[..o]);
                let after = &rest[o + OPEN.len()..];
                match (after.find(CLOSE), after.find(OPEN)) {
                    (Some(c), reopen) if reopen.is_none_or(|r| c < r) => {
                        calls.push(Ok(after[..c].trim().to_string()));
                        rest = &after[c + CLOSE.len()..];
                    }
                    (_, Some(r)) => {
                        calls.push(Err(format!("a second {OPEN} before the first closed")));
                        rest = &after[r..];
                    }
                    (None, None) => {
                        calls.push(Err(format!("{OPEN} not closed with {CLOSE}")));
                        break;
                    }
                    (Some(_), None) => unreachable!("handled by the first arm"),
                }
            }
            (None, Some(_)) => unreachable!("handled above"),
        }
    }
    Turn { prose, calls }
}

/// The call a `<tool_call>` block (its text, or what is wrong with it) writes, as written; or why
/// it is not one.
fn block_call(body: &Result<String, String>) -> Result<RawCall, String> {
    let b = body.as_ref().map_err(String::clone)?;
    let v: Json =
        serde_json::from_str(b).map_err(|e| format!("the call is not valid JSON: {e}"))?;
    raw_call(&v)
}

/// What one assistant turn's raw text says, read as an episode's last turn is: its
/// `<tool_call>` blocks as calls (those that are not a call's JSON counted as format errors) and,
/// when it makes no call, its answer by [`answer_of`].
pub fn read_turn(text: &str) -> (Vec<RawCall>, Option<String>, u32) {
    let turn = split_turn(text);
    let mut errors = 0;
    let mut calls = Vec::new();
    for body in &turn.calls {
        match block_call(body) {
            Ok(c) => calls.push(c),
            Err(_) => errors += 1,
        }
    }
    let answer = if turn.calls.is_empty() {
        answer_of(&turn.prose)
    } else {
        None
    };
    (calls, answer, errors)
}

/// Reads the JSON of one `<tool_call>` against the offered tools: the call (values in canonical
/// text) and its arguments as JSON text (OpenAI's form), or what is wrong with it.
fn parse_tool_call(body: &str, tools: &[ToolSpec]) -> Result<(Call, String), String> {
    let v: Json =
        serde_json::from_str(body).map_err(|e| format!("the call is not valid JSON: {e}"))?;
    let (name, written) = raw_call(&v)?;
    let call = call_of(&name, &written);
    let spec = tools
        .iter()
        .find(|t| t.name == call.name)
        .ok_or_else(|| format!("unknown tool {:?}", call.name))?;
    let args = match v.get("arguments") {
        Some(Json::String(s)) => serde_json::from_str(s).unwrap_or(Json::Null),
        Some(a) => a.clone(),
        None => Json::Null,
    };
    let empty = serde_json::Map::new();
    let given = args.as_object().unwrap_or(&empty);
    let props = spec.parameters["properties"].as_object().unwrap_or(&empty);
    // The schema's `required` list when it has one; without it every property is required.
    let required = |name: &str| match spec.parameters["required"].as_array() {
        Some(r) => r.iter().any(|x| x.as_str() == Some(name)),
        None => true,
    };
    for (name, schema) in props {
        let Some(value) = given.get(name) else {
            if required(name) {
                return Err(format!("{} needs argument {name:?}", spec.name));
            }
            continue;
        };
        let fits = match schema["type"].as_str() {
            Some("integer") => value.is_i64() || value.is_u64(),
            Some("number") => value.is_number(),
            Some("string") => value.is_string(),
            Some("boolean") => value.is_boolean(),
            Some("array") => value.is_array(),
            Some("object") => value.is_object(),
            _ => !value.is_null(),
        };
        if !fits {
            return Err(format!(
                "argument {name:?} of {} must be of type {}, got {value}",
                spec.name, schema["type"]
            ));
        }
        if let Some(allowed) = schema["enum"].as_array() {
            if !allowed.contains(value) {
                return Err(format!(
                    "argument {name:?} of {} must be one of {}",
                    spec.name, schema["enum"]
                ));
            }
        }
    }
    if let Some(extra) = given.keys().find(|k| !props.contains_key(*k)) {
        return Err(format!("{} has no argument {extra:?}", spec.name));
    }
    Ok((call, Json::Object(given.clone()).to_string()))
}

/// The answer rule: what part of the final assistant text is compared with the gold answer.
/// The text outside `<tool_call>` blocks is read, and the answer is its last number (an optional
/// minus sign, digits with optional `,` thousands separators, optional decimals: `1,234` → `1234`,
/// and scoring reads `12.0` as `12`) or its last entity id (`e17`), whichever comes last. Text
/// with neither answers itself, trimmed; empty text gives no answer.
pub fn answer_of(text: &str) -> Option<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut last: Option<String> = None;
    let mut i = 0;
    while i < chars.len() {
        let prev_word = i > 0 && chars[i - 1].is_alphanumeric();
        let c = chars[i];
        let starts_number = c.is_ascii_digit()
            || (c == '-' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()));
        let starts_entity =
            (c == 'e' || c == 'E') && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit());
        if prev_word || !(starts_number || starts_entity) {
            i += 1;
            continue;
        }
        let mut j = i + 1;
        let mut token = String::from(c.to_ascii_lowercase());
        while j < chars.len() {
            let d = chars[j];
            let digit_follows = chars.get(j + 1).is_some_and(|x| x.is_ascii_digit());
            if d.is_ascii_digit() {
                token.push(d);
            } else if d == ',' && starts_number && digit_follows {
                // a thousands separator: exactly three digits follow
                let group: String = chars[j + 1..]
                    .iter()
                    .take_while(|x| x.is_ascii_digit())
                    .collect();
                if group.len() != 3 {
                    break;
                }
            } else if d == '.' && starts_number && digit_follows && !token.contains('.') {
                token.push('.');
            } else {
                break;
            }
            j += 1;
        }
        if !chars.get(j).is_some_and(|x| x.is_alphabetic()) {
            last = Some(token);
        }
        i = j;
    }
    last.or_else(|| {
        let t = text.trim();
        (!t.is_empty()).then(|| t.to_string())
    })
}

/// The scripted demonstration of `item` in the chat format: each gold call in its own turn, its
/// result forced, then `The answer is …`; for a call-only item, one turn of every gold call (or,
/// with none, a sentence saying that no function applies), graded by the item's calls rule.
/// Returns the whole sequence (prompt included) and which tokens the policy writes; or why the
/// item gives none (no gold, a gold call that fails, a replay that does not read back as the
/// gold calls and answer, a sequence past the episode's limits).
pub fn demonstration<T: TaskSource + ToolSet<T::Item>>(
    protocol: &ChatProtocol,
    task: &T,
    item: &T::Item,
) -> std::result::Result<(Vec<u32>, Vec<bool>), NoDemonstration> {
    let gold = task.gold(item).ok_or(NoDemonstration::NoGold)?;
    // Stateful tools: the gold calls run in a session of the demonstration's own.
    let begun = task
        .begin(vec![item.clone()])
        .pop()
        .unwrap_or_else(|| item.clone());
    let played = replay(protocol, task, &begun, &gold);
    task.end(vec![(&begun, None)]);
    played
}

/// The demonstration of `item` (begun) with `gold`, as [`demonstration`] describes.
fn replay<T: TaskSource + ToolSet<T::Item>>(
    protocol: &ChatProtocol,
    task: &T,
    item: &T::Item,
    gold: &Gold,
) -> std::result::Result<(Vec<u32>, Vec<bool>), NoDemonstration> {
    let mut ep: ChatEpisode<T::Item> = protocol
        .start(task, item.clone())
        .map_err(|e| NoDemonstration::Unwritable(e.to_string()))?;
    let fmt = &protocol.format;
    let call_only = task.call_only(item);
    let turns: Vec<String> = if call_only {
        vec![call_only_turn(gold, &ep.tools)]
    } else if let AnswerRule::Turns(per_turn) = &gold.rule {
        per_turn
            .iter()
            .flat_map(|calls| {
                let written = calls.iter().map(|(name, args)| {
                    let call = py_dumps(&json!({"name": name, "arguments": args}));
                    format!("{OPEN}\n{call}\n{CLOSE}")
                });
                let close = if calls.is_empty() { CANNOT } else { DONE };
                written.chain(std::iter::once(close.to_string()))
            })
            .collect()
    } else {
        let mut turns: Vec<String> = gold
            .calls
            .iter()
            .map(|c| format!("{OPEN}\n{}\n{CLOSE}", call_text(c, &ep.tools)))
            .collect();
        turns.push(format!("The answer is {}.", gold.answer));
        turns
    };
    for turn in turns {
        let mut ids = fmt
            .encode(&turn)
            .map_err(|e| NoDemonstration::Unwritable(e.to_string()))?;
        ids.push(fmt.im_end);
        for id in ids {
            while ep.take_forced().is_some() {}
            ep.push_token(id);
            let calls = ep.pending_calls().to_vec();
            if calls.is_empty() {
                continue;
            }
            let pairs: Vec<(&T::Item, &Call)> = calls.iter().map(|c| (&ep.item, c)).collect();
            let results = task.execute_batch(&pairs);
            for (call, r) in calls.iter().zip(&results) {
                if let Err(error) = r {
                    return Err(NoDemonstration::CallFailed {
                        call: call.to_string(),
                        error: error.clone(),
                    });
                }
            }
            ep.deliver(results);
        }
    }
    if protocol.limits.reached(ep.tokens.len(), ep.written) {
        return Err(NoDemonstration::TooLong);
    }
    if !ep.done {
        return Err(NoDemonstration::Replay("did not end the episode".into()));
    }
    if ep.attempt.format_errors > 0 {
        return Err(NoDemonstration::Replay(format!(
            "made {} format error(s)",
            ep.attempt.format_errors
        )));
    }
    let right = match &gold.rule {
        AnswerRule::Calls(rule) => rule.verdict(&ep.attempt.raw_calls).is_ok(),
        AnswerRule::Turns(per_turn) => ep.attempt.calls_by_turn(per_turn.len()) == **per_turn,
        _ => ep.attempt.calls == gold.calls,
    };
    if !right {
        return Err(NoDemonstration::Replay(
            "read calls other than the gold ones".into(),
        ));
    }
    Ok((ep.tokens, ep.policy_mask))
}

/// What a call-only task's demonstration writes in its one turn: every gold call in a
/// `<tool_call>` block (under a calls rule, each parameter's first acceptable value, in the
/// ground truth's order), or, when no call is right, a reply saying that none applies.
fn call_only_turn(gold: &Gold, tools: &[ToolSpec]) -> String {
    let calls: Vec<String> = match &gold.rule {
        AnswerRule::Calls(rule) => rule
            .first_acceptable()
            .iter()
            .map(|(name, args)| py_dumps(&json!({"name": name, "arguments": args})))
            .collect(),
        _ => gold.calls.iter().map(|c| call_text(c, tools)).collect(),
    };
    if calls.is_empty() {
        return NONE_APPLIES.to_string();
    }
    calls
        .iter()
        .map(|c| format!("{OPEN}\n{c}\n{CLOSE}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The demonstrated reply that ends a user turn whose calls are done.
pub const DONE: &str = "Done.";

/// The demonstrated reply to a user turn that no call can serve (a function or a parameter is
/// missing).
pub const CANNOT: &str =
    "I cannot do that with the functions and information I have. Please tell me more.";

/// The demonstrated reply when none of the offered functions applies.
pub const NONE_APPLIES: &str =
    "None of the functions I can call applies to this request, so I cannot call one.";

/// A call as `{"name": …, "arguments": {…}}` with its arguments in schema order, integers as
/// JSON numbers.
fn call_text(call: &Call, tools: &[ToolSpec]) -> String {
    let spec = tools.iter().find(|t| t.name == call.name);
    let mut names: Vec<&String> = call.arguments.keys().collect();
    if let Some(order) = spec.and_then(|s| s.parameters["required"].as_array()) {
        names.sort_by_key(|n| order.iter().position(|o| o.as_str() == Some(n.as_str())));
    }
    let mut args = serde_json::Map::new();
    for n in names {
        let v = call.value(n).unwrap_or_default();
        let integer = spec.is_some_and(|s| s.parameters["properties"][n]["type"] == "integer");
        let value = match v.parse::<i64>() {
            Ok(i) if integer => Json::from(i),
            _ => Json::from(v),
        };
        args.insert(n.clone(), value);
    }
    py_dumps(&json!({"name": call.name, "arguments": args}))
}

impl<I: Clone + Send> Decodable for ChatEpisode<I> {
    fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    fn done(&self) -> bool {
        self.done
    }

    fn take_forced(&mut self) -> Option<u32> {
        ChatEpisode::take_forced(self)
    }

    fn push_token(&mut self, token: u32) {
        ChatEpisode::push_token(self, token)
    }

    fn truncate(&mut self) {
        ChatEpisode::truncate(self)
    }
}

impl<T: TaskSource + ToolSet<T::Item>> ProtocolEpisode<T> for ChatEpisode<T::Item> {
    fn policy_mask(&self) -> &[bool] {
        &self.policy_mask
    }

    fn prompt_len(&self) -> usize {
        self.prompt_len
    }

    fn pending_calls(&self) -> &[Call] {
        ChatEpisode::pending_calls(self)
    }

    fn deliver(&mut self, results: Vec<Result<String, String>>) {
        ChatEpisode::deliver(self, results)
    }

    fn attempt(&self) -> &Attempt {
        &self.attempt
    }

    fn attempt_mut(&mut self) -> &mut Attempt {
        &mut self.attempt
    }

    fn item(&self) -> &T::Item {
        &self.item
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_is_the_last_number_or_entity() {
        let cases = [
            ("The answer is 5535.", Some("5535")),
            ("123 * 45 = 5,535", Some("5535")),
            ("It is -12.", Some("-12")),
            ("About 3.50 units", Some("3.50")),
            ("The boss of e17 is e5.", Some("e5")),
            ("The age of e17 is 34", Some("34")),
            (
                "x2 and a2b are not numbers",
                Some("x2 and a2b are not numbers"),
            ),
            ("1,23 is two numbers", Some("23")),
            ("Paris", Some("Paris")),
            ("  ", None),
        ];
        for (text, want) in cases {
            assert_eq!(answer_of(text).as_deref(), want, "{text:?}");
        }
    }

    #[test]
    fn a_turn_splits_into_prose_and_calls() {
        let t = split_turn(
            "Let me see.<tool_call>\n{\"a\": 1}\n</tool_call> then <tool_call>{}</tool_call>",
        );
        assert_eq!(t.prose, "Let me see. then ");
        assert_eq!(
            t.calls,
            vec![Ok("{\"a\": 1}".to_string()), Ok("{}".to_string())]
        );
        let t = split_turn("<tool_call>{<tool_call>{}</tool_call>");
        assert!(t.calls[0].as_ref().unwrap_err().contains("second"));
        assert_eq!(t.calls[1], Ok("{}".to_string()));
        let t = split_turn("<tool_call>{\"name\"");
        assert!(t.calls[0].as_ref().unwrap_err().contains("not closed"));
        let t = split_turn("oops</tool_call>");
        assert!(t.calls[0].as_ref().unwrap_err().contains("without"));
        assert_eq!(t.prose, "oops");
    }
}
