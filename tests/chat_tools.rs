//! Tool use in a real model's chat format: SmolLM2-135M-Instruct's tokenizer and ChatML template
//! (the GGUF file set-up installs), episodes played token by token as an actor plays them.
use std::sync::Arc;

use asymre::env::tool_use::protocol::chat::{demonstration, ChatEpisode, ChatFormat, ChatProtocol};
use asymre::env::tool_use::protocol::Limits;
use asymre::env::tool_use::reward::{score, RewardConfig};
use asymre::env::tool_use::tasks::{Item, Split, Task, TaskKind, TaskSpec};
use asymre::env::Protocol;
use asymre::policy::lm::source::{read_text, resolve};

fn format() -> Arc<ChatFormat> {
    let files = resolve("smollm2-135m").expect("set-up installs SmolLM2");
    let (_, text) = read_text(&files).unwrap();
    Arc::new(ChatFormat::new(text, "smollm2-135m").unwrap())
}

fn task(kind: TaskKind) -> Task {
    Task::new(TaskSpec {
        kind,
        seed: 3,
        digits: 2,
        no_call_share: 0.2,
        entities: 40,
        heldout_share: 0.2,
        chain_arith: true,
        width: 2,
        distractors: 1,
    })
}

fn protocol(format: &Arc<ChatFormat>, max_tokens: usize) -> ChatProtocol {
    ChatProtocol {
        format: format.clone(),
        limits: Limits::new(max_tokens, 4),
    }
}

/// Writes `text` and then `<|im_end|>` as the policy, taking forced tokens as an actor does.
fn say(ep: &mut ChatEpisode<Item>, task: &Task, f: &ChatFormat, text: &str) {
    let mut ids = f.tokenizer.encode_with(text, false).unwrap();
    ids.push(f.tokenizer.token_to_id("<|im_end|>").unwrap());
    for id in ids {
        while ep.take_forced().is_some() {}
        ep.push_policy(id, task);
    }
    while ep.take_forced().is_some() {}
}

fn text_of(f: &ChatFormat, ids: &[u32]) -> String {
    f.tokenizer.decode_with(ids, false)
}

/// Every family's scripted demonstration, replayed as the policy's tokens, is a perfect episode:
/// the calls are the gold calls, the answer is right, nothing is a format error; the forced
/// tokens are the tool turns in the Hermes / Qwen2.5 convention.
#[test]
fn demonstrations_of_every_family_score_perfectly() {
    let f = format();
    let p = protocol(&f, 1024);
    for kind in [
        TaskKind::Calc,
        TaskKind::Lookup,
        TaskKind::Chain,
        TaskKind::Fanout,
        TaskKind::Menu,
    ] {
        let task = task(kind);
        for i in 0..20 {
            let item = task.item(Split::Train, i);
            let gold = task.gold(&item).unwrap();
            let (tokens, mask) = demonstration(&p, &task, &item).expect("a demonstration");
            // Replay: the policy's tokens pushed, the rest taken as forced.
            let mut ep = p.start(&task, item.clone()).unwrap();
            for (&t, &by_policy) in tokens.iter().zip(&mask).skip(ep.prompt_len) {
                if by_policy {
                    assert!(
                        ep.take_forced().is_none(),
                        "{kind:?}: a forced token was skipped"
                    );
                    ep.push_policy(t, &task);
                } else {
                    assert_eq!(ep.take_forced(), Some(t), "{kind:?}");
                }
            }
            assert!(ep.done, "{kind:?} {i}");
            assert_eq!(ep.tokens, tokens);
            let s = score(&RewardConfig::default(), &ep.attempt, &gold);
            assert_eq!(
                (s.completion, s.f1, s.format_errors),
                (1.0, 1.0, 0),
                "{kind:?} {i}"
            );
            let text = text_of(&f, &tokens[ep.prompt_len..]);
            assert_eq!(
                text.matches("<tool_response>").count(),
                gold.calls.len(),
                "{text}"
            );
            for (call, result) in ep.attempt.calls.iter().zip(&ep.attempt.results) {
                let r = result.as_ref().unwrap();
                assert!(
                    text.contains(&format!(
                        "<|im_end|>\n<|im_start|>user\n<tool_response>\n{r}\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
                    )),
                    "{call:?}: {text}"
                );
            }
            // The messages log ends with the answer and reads back as the same item.
            let last = ep.messages.last().unwrap();
            assert_eq!(last["role"], "assistant");
            let question = ep.messages.iter().find(|m| m["role"] == "user").unwrap();
            assert_eq!(
                task.parse_prompt(question["content"].as_str().unwrap()),
                Some(item)
            );
        }
    }
}

/// The prompt is SmolLM2's template with a system message listing the tools' JSON schemas, and
/// a natural-language question.
#[test]
fn the_prompt_offers_the_tools_and_asks_in_words() {
    let f = format();
    let p = protocol(&f, 1024);
    let task = task(TaskKind::Calc);
    let item = (0..50)
        .map(|i| task.item(Split::Train, i))
        .find(|it| !task.gold(it).unwrap().calls.is_empty())
        .unwrap();
    let ep = p.start(&task, item.clone()).unwrap();
    let prompt = text_of(&f, &ep.tokens);
    assert!(prompt.starts_with("<|im_start|>system\n"), "{prompt}");
    assert!(prompt.contains("<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"add\""));
    let question = task.question(&item);
    assert!(question.starts_with("What is ") && question.ends_with('?'));
    assert!(prompt.ends_with(&format!(
        "<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    )));
    assert!(ep.policy_mask.iter().all(|m| !m));
}

/// Malformed calls are format errors answered with the error's text, and the episode goes on;
/// nothing panics.
#[test]
fn malformed_calls_are_format_errors_with_the_error_as_the_response() {
    let f = format();
    let p = protocol(&f, 2048);
    let task = task(TaskKind::Calc);
    let item = (0..50)
        .map(|i| task.item(Split::Train, i))
        .find(|it| task.gold(it).unwrap().calls.len() == 1)
        .unwrap();
    let cases = [
        ("<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": }\n</tool_call>", "not valid JSON"),
        ("<tool_call>\n{\"name\": \"pow\", \"arguments\": {\"a\": 1, \"b\": 2}}\n</tool_call>", "unknown tool"),
        ("<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 1}}\n</tool_call>", "needs argument \"b\""),
        ("<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2, \"c\": 3}}\n</tool_call>", "no argument \"c\""),
        ("<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": \"1\", \"b\": 2}}\n</tool_call>", "must be of type"),
        ("<tool_call>\n{\"name\": \"add\", <tool_call>{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2}}</tool_call>", "second <tool_call>"),
        ("<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2}}", "not closed"),
    ];
    for (text, error) in cases {
        let mut ep = p.start(&task, item.clone()).unwrap();
        say(&mut ep, &task, &f, text);
        assert!(!ep.done, "{text}: the episode goes on after an error");
        assert!(ep.attempt.format_errors >= 1, "{text}");
        let errors: Vec<&str> = ep
            .messages
            .iter()
            .filter(|m| m["role"] == "tool")
            .filter_map(|m| m["content"].as_str())
            .filter(|c| c.starts_with("error: "))
            .collect();
        assert_eq!(errors.len(), 1, "{text}: {errors:?}");
        let content = errors[0];
        assert!(content.contains(error), "{text}: {content}");
        // The forced tool turn holds the error text, and the policy can still answer.
        assert!(text_of(&f, &ep.tokens)
            .contains(&format!("<tool_response>\n{content}\n</tool_response>")));
        say(&mut ep, &task, &f, "The answer is 7.");
        assert!(ep.done);
        assert_eq!(ep.attempt.answer.as_deref(), Some("7"));
    }
}

/// Two calls in one turn are both executed and answered in one tool turn; running past
/// `max_tokens` truncates with a format error; the sequence is exactly the ids written.
#[test]
fn parallel_calls_limits_and_token_in_token_out() {
    let f = format();
    let task = task(TaskKind::Calc);
    let item = task.item(Split::Train, 0);
    let mut ep = protocol(&f, 2048).start(&task, item.clone()).unwrap();
    say(
        &mut ep,
        &task,
        &f,
        "<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 2, \"b\": 3}}\n</tool_call>\n<tool_call>\n{\"name\": \"mul\", \"arguments\": {\"b\": 4, \"a\": 5}}\n</tool_call>",
    );
    assert_eq!(
        ep.attempt.results,
        vec![Some("5".into()), Some("20".into())]
    );
    assert!(text_of(&f, &ep.tokens).ends_with(
        "<|im_start|>user\n<tool_response>\n5\n</tool_response>\n<tool_response>\n20\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    ));
    assert_eq!(ep.messages.last().unwrap()["role"], "tool");
    assert_eq!(
        ep.messages[ep.messages.len() - 3]["tool_calls"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // Token in, token out: "12" written as two one-digit tokens stays two tokens.
    let mut ep = protocol(&f, 2048).start(&task, item.clone()).unwrap();
    let one = f.tokenizer.encode_with("1", false).unwrap();
    let two = f.tokenizer.encode_with("2", false).unwrap();
    let start = ep.tokens.len();
    ep.push_policy(one[0], &task);
    ep.push_policy(two[0], &task);
    ep.push_policy(f.tokenizer.token_to_id("<|im_end|>").unwrap(), &task);
    assert_eq!(&ep.tokens[start..start + 2], &[one[0], two[0]]);
    assert_eq!(ep.attempt.answer.as_deref(), Some("12"));

    // The limit: a prompt plus 5 tokens.
    let short = protocol(&f, 1024).start(&task, item.clone()).unwrap();
    let mut ep = protocol(&f, short.prompt_len + 5)
        .start(&task, item.clone())
        .unwrap();
    for _ in 0..10 {
        ep.push_policy(one[0], &task);
    }
    assert!(ep.done);
    assert_eq!(ep.tokens.len(), ep.prompt_len + 5);
    assert_eq!(ep.attempt.format_errors, 1);
    assert_eq!(ep.attempt.answer, None);

    // Written tokens: the fifth the policy writes ends the episode, forced tokens not counted.
    let limits = Limits {
        max_new: 5,
        ..Limits::new(2048, 4)
    };
    let p = ChatProtocol {
        format: f.clone(),
        limits,
    };
    let mut ep = p.start(&task, item.clone()).unwrap();
    for _ in 0..10 {
        ep.push_policy(one[0], &task);
    }
    assert!(ep.done);
    assert_eq!(ep.tokens.len(), ep.prompt_len + 5);
    assert_eq!(ep.attempt.format_errors, 1);

    // One turn: its calls run and count, their results are not shown, and nothing is an error.
    let p = ChatProtocol {
        format: f.clone(),
        limits: Limits {
            max_turns: 1,
            ..Limits::new(2048, 4)
        },
    };
    let mut ep = p.start(&task, item).unwrap();
    say(
        &mut ep,
        &task,
        &f,
        "<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 2, \"b\": 3}}\n</tool_call>",
    );
    assert!(ep.done);
    assert_eq!(ep.attempt.calls.len(), 1);
    assert_eq!(ep.attempt.results, vec![Some("5".into())]);
    assert_eq!(ep.attempt.format_errors, 0);
    assert!(text_of(&f, &ep.tokens).ends_with("</tool_call><|im_end|>"));
    assert_eq!(ep.messages.last().unwrap()["role"], "assistant");
}
