//! One episode of the token protocol shared by every task:
//!
//! ```text
//! <bos> prompt … CALL tool arg value … /CALL RES value /RES … ANS answer <eos>
//! ```
//!
//! The policy writes the CALL and ANS parts. At `/CALL` the environment executes the call and queues
//! `RES value /RES` (or `RES ERR /RES` for a malformed call) as forced tokens, masked out of the loss.
//! Anything malformed is a format error, never a panic.
pub mod chat;

use std::collections::VecDeque;

use super::calls::call_json;
use super::tasks::Item;
use crate::env::tool_use::reward::{Attempt, Call};
use crate::env::{
    Decodable, Demonstration, NoDemonstration, Protocol, ProtocolEpisode, TaskSource, ToolSet,
};
use crate::text::words::{self as vocab, ANS, BOS, CALL, END_CALL, END_RES, EOS, ERR, RES};

/// Episode limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest sequence, prompt and results included.
    pub max_tokens: usize,
    /// Most calls; starting one more ends the episode with a format error.
    pub max_calls: usize,
    /// Most tokens the policy writes; reaching it truncates (a format error).
    pub max_new: usize,
    /// Chat: most assistant turns; the last one's calls are run and scored, their results
    /// not shown.
    pub max_turns: usize,
}

impl Limits {
    /// `max_tokens` and `max_calls`, no limit on written tokens or turns.
    pub const fn new(max_tokens: usize, max_calls: usize) -> Self {
        Limits {
            max_tokens,
            max_calls,
            max_new: usize::MAX,
            max_turns: usize::MAX,
        }
    }

    /// Whether an episode of `len` tokens, `written` of them by the policy, must stop.
    pub fn reached(&self, len: usize, written: usize) -> bool {
        len >= self.max_tokens || written >= self.max_new
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Free,
    /// Inside CALL … /CALL; the CALL token is at this position.
    InCall(usize),
    /// After ANS; the ANS token is at this position.
    InAnswer(usize),
}

/// An episode in progress.
#[derive(Debug, Clone)]
pub struct Episode<I = Item> {
    pub item: I,
    /// `<bos>`, the prompt, then everything generated or forced.
    pub tokens: Vec<u32>,
    /// True where the policy chose the token (the loss and log μ use only these).
    pub policy_mask: Vec<bool>,
    pub prompt_len: usize,
    pub attempt: Attempt,
    pub done: bool,
    forced: VecDeque<u32>,
    /// A call the policy completed, waiting for its result.
    pending: Vec<Call>,
    phase: Phase,
    stray: bool,
    /// Tokens the policy wrote.
    written: usize,
    limits: Limits,
}

impl<I> Episode<I> {
    pub fn new<T: TaskSource<Item = I> + ?Sized>(task: &T, item: I, limits: Limits) -> Self {
        let tokens = prompt_tokens(task, &item);
        let prompt_len = tokens.len();
        Episode {
            item,
            policy_mask: vec![false; prompt_len],
            tokens,
            prompt_len,
            attempt: Attempt::default(),
            done: prompt_len >= limits.max_tokens,
            forced: VecDeque::new(),
            pending: Vec::new(),
            phase: Phase::Free,
            stray: false,
            written: 0,
            limits,
        }
    }

    /// The next token the environment feeds, if it has one queued. It is appended, masked out.
    pub fn take_forced(&mut self) -> Option<u32> {
        let t = self.forced.pop_front()?;
        self.tokens.push(t);
        self.policy_mask.push(false);
        if !self.done && self.limits.reached(self.tokens.len(), self.written) {
            self.truncate();
        }
        Some(t)
    }

    /// Ends the episode as truncated (a format error).
    pub fn truncate(&mut self) {
        if !self.done {
            self.attempt.format_errors += 1;
            self.done = true;
            self.forced.clear();
        }
    }

    /// Appends a token the policy chose and reacts to it; a call it completes is run with
    /// `task`.
    pub fn push_policy(&mut self, t: u32, task: &(impl ToolSet<I> + ?Sized)) {
        self.push_token(t);
        if let Some(call) = self.pending.first() {
            let r = task.execute(&self.item, call);
            self.deliver(vec![r]);
        }
    }

    /// Appends a token the policy chose and reacts to it; a call it completes waits in
    /// `pending` for [`Episode::deliver`].
    pub fn push_token(&mut self, t: u32) {
        if self.done {
            return;
        }
        let pos = self.tokens.len();
        self.tokens.push(t);
        self.policy_mask.push(true);
        self.written += 1;
        match (self.phase, t) {
            (Phase::Free, CALL)
                if self.attempt.calls.len() + self.pending.len() >= self.limits.max_calls =>
            {
                self.attempt.format_errors += 1;
                self.finish();
            }
            (Phase::Free, CALL) => self.phase = Phase::InCall(pos),
            (Phase::Free, ANS) => self.phase = Phase::InAnswer(pos),
            (Phase::Free, EOS) => {
                self.attempt.format_errors += 1; // no answer
                self.finish();
            }
            (Phase::Free, _) => self.stray = true,
            (Phase::InCall(start), END_CALL) => {
                self.phase = Phase::Free;
                match parse_call(&self.tokens[start + 1..pos]) {
                    Ok(call) => self.pending.push(call),
                    Err(_) => {
                        self.attempt.format_errors += 1;
                        self.forced.extend([RES, ERR, END_RES]);
                    }
                }
            }
            (Phase::InCall(_), EOS) => {
                self.attempt.format_errors += 1; // unterminated call
                self.finish();
            }
            (Phase::InCall(_), _) => {}
            (Phase::InAnswer(start), EOS) => {
                self.attempt.answer = Some(vocab::decode(&self.tokens[start + 1..pos]));
                self.finish();
            }
            (Phase::InAnswer(_), _) => {}
        }
        if !self.done && self.limits.reached(self.tokens.len(), self.written) {
            self.truncate();
        }
    }

    /// The results of the pending calls: recorded in the attempt, and queued as
    /// `RES value /RES` (`RES ERR /RES` for an error or a value the vocabulary cannot spell)
    /// unless the episode has ended.
    pub fn deliver(&mut self, results: Vec<Result<String, String>>) {
        let calls = std::mem::take(&mut self.pending);
        for (call, r) in calls.into_iter().zip(results) {
            // A result the vocabulary cannot spell is the tool's error, never a panic.
            let r = r.and_then(|value| vocab::encode(&value).map(|ids| (value, ids)));
            self.attempt.calls.push(call);
            self.attempt
                .results
                .push(r.as_ref().ok().map(|(value, _)| value.clone()));
            let ids = r.map(|(_, ids)| ids).unwrap_or_else(|_| {
                self.attempt.format_errors += 1;
                vec![ERR]
            });
            if !self.done {
                self.forced.push_back(RES);
                self.forced.extend(ids);
                self.forced.push_back(END_RES);
            }
        }
    }

    fn finish(&mut self) {
        if self.stray {
            self.attempt.format_errors += 1;
        }
        self.done = true;
    }

    /// The policy's generated part as text (after the prompt).
    pub fn completion_text(&self) -> String {
        vocab::decode(&self.tokens[self.prompt_len..])
    }
}

/// `<bos>` and the prompt's tokens: how every episode of `item` starts.
pub fn prompt_tokens<T: TaskSource + ?Sized>(task: &T, item: &T::Item) -> Vec<u32> {
    let mut tokens = vec![BOS];
    tokens.extend(vocab::encode(&task.prompt(item)).expect("generated prompts use the vocabulary"));
    tokens
}

/// `tool name value name value …` → a call; `Err` when the shape is wrong.
pub fn parse_call(tokens: &[u32]) -> Result<Call, String> {
    let text = vocab::decode(tokens);
    let words: Vec<&str> = text.split_whitespace().collect();
    let (name, args) = words.split_first().ok_or("empty call")?;
    if args.len() % 2 != 0 {
        return Err("arguments must be name value pairs".into());
    }
    let pairs: Vec<(&str, &str)> = args.chunks(2).map(|c| (c[0], c[1])).collect();
    let call = Call::new(name, &pairs);
    if call.arguments.len() != pairs.len() {
        return Err("an argument is repeated".into());
    }
    Ok(call)
}

/// The scripted demonstration of an item: the gold calls with their results, then the answer.
/// Returns the tokens after the prompt and which of them the policy writes.
pub fn demonstration<T: TaskSource + ToolSet<T::Item>>(
    task: &T,
    item: &T::Item,
) -> Result<(Vec<u32>, Vec<bool>), NoDemonstration> {
    let gold = task.gold(item).ok_or(NoDemonstration::NoGold)?;
    let mut tokens = Vec::new();
    let mut mask = Vec::new();
    let mut push = |text: &str, by_policy: bool| -> Result<(), NoDemonstration> {
        let ts = vocab::encode(text).map_err(NoDemonstration::Unwritable)?;
        mask.extend(std::iter::repeat_n(by_policy, ts.len()));
        tokens.extend(ts);
        Ok(())
    };
    for call in &gold.calls {
        let mut text = format!("CALL {}", call.name);
        for (k, v) in ordered_args(call) {
            text.push_str(&format!(" {k} {v}"));
        }
        text.push_str(" /CALL");
        push(&text, true)?;
        let result = task
            .execute(item, call)
            .map_err(|error| NoDemonstration::CallFailed {
                call: call.to_string(),
                error,
            })?;
        push(&format!("RES {result} /RES"), false)?;
    }
    push(&format!("ANS {}", gold.answer), true)?;
    tokens.push(EOS);
    mask.push(true);
    Ok((tokens, mask))
}

/// An episode in the common JSON function-call form.
pub fn episode_json<T: TaskSource>(task: &T, ep: &Episode<T::Item>) -> serde_json::Value {
    let calls: Vec<serde_json::Value> = ep.attempt.calls.iter().map(call_json).collect();
    serde_json::json!({
        "prompt": task.prompt(&ep.item),
        "calls": calls,
        "results": ep.attempt.results,
        "answer": ep.attempt.answer,
    })
}

/// A call's arguments in schema order (a, b, c / ent, attr) rather than alphabetical.
fn ordered_args(call: &Call) -> Vec<(&str, &str)> {
    const ORDER: [&str; 5] = ["ent", "attr", "a", "b", "c"];
    let mut args: Vec<(&str, &str)> = call
        .arguments
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    args.sort_by_key(|(k, _)| ORDER.iter().position(|o| o == k).unwrap_or(ORDER.len()));
    args
}

/// The token protocol of the 60-word vocabulary as a [`Protocol`].
#[derive(Debug, Clone, Copy)]
pub struct TokenProtocol {
    pub limits: Limits,
}

impl<T: TaskSource + ToolSet<T::Item>> Protocol<T> for TokenProtocol {
    type Episode = Episode<T::Item>;

    fn start(&self, task: &T, item: T::Item) -> crate::error::Result<Episode<T::Item>> {
        Ok(Episode::new(task, item, self.limits))
    }

    fn max_tokens(&self) -> usize {
        self.limits.max_tokens
    }

    fn demonstration(&self, task: &T, item: &T::Item) -> Result<Demonstration, NoDemonstration> {
        let (rest, rest_mask) = demonstration(task, item)?;
        let mut tokens = prompt_tokens(task, item);
        let mut policy_mask = vec![false; tokens.len()];
        tokens.extend(rest);
        policy_mask.extend(rest_mask);
        Ok(Demonstration {
            tokens,
            policy_mask,
        })
    }

    fn episode_json(&self, task: &T, ep: &Episode<T::Item>) -> serde_json::Value {
        episode_json(task, ep)
    }
}

impl<I: Clone + Send> Decodable for Episode<I> {
    fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    fn done(&self) -> bool {
        self.done
    }

    fn take_forced(&mut self) -> Option<u32> {
        Episode::take_forced(self)
    }

    fn push_token(&mut self, token: u32) {
        Episode::push_token(self, token)
    }

    fn truncate(&mut self) {
        Episode::truncate(self)
    }
}

impl<T: TaskSource + ToolSet<T::Item>> ProtocolEpisode<T> for Episode<T::Item> {
    fn policy_mask(&self) -> &[bool] {
        &self.policy_mask
    }

    fn prompt_len(&self) -> usize {
        self.prompt_len
    }

    fn pending_calls(&self) -> &[Call] {
        &self.pending
    }

    fn deliver(&mut self, results: Vec<Result<String, String>>) {
        Episode::deliver(self, results)
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
    use crate::env::tool_use::reward::{score, RewardConfig};
    use crate::env::tool_use::tasks::{Split, Task, TaskKind, TaskSpec};

    fn task(kind: TaskKind) -> Task {
        Task::new(TaskSpec {
            kind,
            seed: 2,
            digits: 2,
            no_call_share: 0.0,
            entities: 30,
            heldout_share: 0.2,
            chain_arith: true,
            width: 2,
            distractors: 1,
        })
    }

    const LIMITS: Limits = Limits::new(96, 4);

    /// Plays `tokens` as the policy, feeding forced tokens as the actor does.
    fn play(task: &Task, ep: &mut Episode, tokens: &[u32]) {
        for &t in tokens {
            while ep.take_forced().is_some() {}
            ep.push_policy(t, task);
        }
        while ep.take_forced().is_some() {}
    }

    #[test]
    fn a_demonstration_played_back_scores_perfectly() {
        for kind in crate::env::tool_use::tasks::tests::FAMILIES {
            let t = task(kind);
            for i in 0..20 {
                let item = t.item(Split::Heldout, i);
                let (tokens, mask) = demonstration(&t, &item).unwrap();
                let mut ep = Episode::new(&t, item.clone(), LIMITS);
                let policy: Vec<u32> = tokens
                    .iter()
                    .zip(&mask)
                    .filter(|(_, m)| **m)
                    .map(|(t, _)| *t)
                    .collect();
                play(&t, &mut ep, &policy);
                assert!(ep.done);
                assert_eq!(
                    &ep.tokens[ep.prompt_len..],
                    &tokens[..],
                    "{}",
                    ep.completion_text()
                );
                assert_eq!(&ep.policy_mask[ep.prompt_len..], &mask[..]);
                let s = score(
                    &RewardConfig::default(),
                    &ep.attempt,
                    &t.gold(&item).unwrap(),
                );
                assert_eq!(
                    (s.completion, s.f1, s.format_errors),
                    (1.0, 1.0, 0),
                    "{}",
                    ep.completion_text()
                );
            }
        }
    }

    #[test]
    fn malformed_calls_and_missing_answers_are_format_errors() {
        let t = task(TaskKind::Calc);
        let item = t.item(Split::Train, 0);
        let mut ep = Episode::new(&t, item.clone(), LIMITS);
        play(
            &t,
            &mut ep,
            &vocab::encode("CALL add a 1 /CALL CALL age a 1 b 2 /CALL").unwrap(),
        );
        assert_eq!(ep.attempt.format_errors, 2);
        assert!(
            ep.completion_text().contains("RES ERR /RES"),
            "{}",
            ep.completion_text()
        );
        assert_eq!(ep.attempt.results, vec![None, None]);
        play(&t, &mut ep, &[EOS]);
        assert!(ep.done);
        assert_eq!(ep.attempt.format_errors, 3, "no answer");

        let mut ep = Episode::new(&t, item.clone(), LIMITS);
        play(&t, &mut ep, &vocab::encode("what ANS 5").unwrap());
        play(&t, &mut ep, &[EOS]);
        assert_eq!(ep.attempt.answer.as_deref(), Some("5"));
        assert_eq!(ep.attempt.format_errors, 1, "a stray token");
    }

    #[test]
    fn limits_end_episodes() {
        let t = task(TaskKind::Calc);
        let item = t.item(Split::Train, 0);
        let limits = Limits::new(96, 1);
        let mut ep = Episode::new(&t, item.clone(), limits);
        play(
            &t,
            &mut ep,
            &vocab::encode("CALL add a 1 b 2 /CALL CALL").unwrap(),
        );
        assert!(ep.done);
        assert_eq!(ep.attempt.format_errors, 1);

        let limits = Limits::new(ep.prompt_len + 3, 4);
        let mut ep = Episode::new(&t, item.clone(), limits);
        play(&t, &mut ep, &vocab::encode("CALL add a 1 b 2").unwrap());
        assert!(ep.done && ep.tokens.len() <= limits.max_tokens);

        // Written tokens: forced results do not count against `max_new`.
        let limits = Limits {
            max_new: 9,
            ..Limits::new(96, 4)
        };
        let mut ep = Episode::new(&t, item, limits);
        play(
            &t,
            &mut ep,
            &vocab::encode("CALL add a 1 b 2 /CALL ANS").unwrap(),
        );
        assert!(!ep.done, "8 written, the result forced");
        play(&t, &mut ep, &vocab::encode("3 4").unwrap());
        assert!(ep.done && ep.attempt.format_errors == 1);
        assert_eq!(ep.policy_mask.iter().filter(|&&m| m).count(), 9);
        assert_eq!(ep.attempt.format_errors, 1);
    }

    /// A tool whose result the vocabulary cannot spell: the call is a format error and the
    /// policy sees `RES ERR /RES`, never a panic.
    #[test]
    fn a_result_the_vocabulary_cannot_spell_is_a_tool_error() {
        struct Accented;
        impl ToolSet<Item> for Accented {
            fn execute(&self, _item: &Item, _call: &Call) -> Result<String, String> {
                Ok("café".into())
            }
        }
        let t = task(TaskKind::Calc);
        let mut ep = Episode::new(&t, t.item(Split::Train, 0), LIMITS);
        for tok in vocab::encode("CALL add a 1 b 2 /CALL").unwrap() {
            ep.push_policy(tok, &Accented);
        }
        let mut forced = Vec::new();
        while let Some(tok) = ep.take_forced() {
            forced.push(tok);
        }
        assert_eq!(forced, [RES, ERR, END_RES]);
        assert_eq!(ep.attempt.format_errors, 1);
        assert_eq!(ep.attempt.results, [None]);
        assert_eq!(ep.attempt.calls.len(), 1);
    }
}
