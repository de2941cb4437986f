//! Stateful multi-turn episodes: BFCL's multi-turn API classes and a user's own class served one
//! instance per episode, conversations of several user turns played in SmolLM2's chat format,
//! graded by the state rule.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use asymre::env::tool_use::bfcl::data_dir;
use asymre::env::tool_use::bfcl::multi::MULTI_CATEGORIES;
use asymre::env::tool_use::protocol::chat::{ChatFormat, ChatProtocol};
use asymre::env::tool_use::protocol::Limits;
use asymre::env::tool_use::stateful::StatefulSource;
use asymre::env::{Protocol, Split, TaskSource};
use asymre::policy::lm::source::{read_text, resolve};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn protocol(max_tokens: usize) -> ChatProtocol {
    let files = resolve("smollm2-135m").expect("set-up installs SmolLM2");
    let (_, text) = read_text(&files).unwrap();
    let mut limits = Limits::new(max_tokens, 40);
    limits.max_turns = 20;
    ChatProtocol {
        format: Arc::new(ChatFormat::new(text, "smollm2-135m").unwrap()),
        limits,
    }
}

/// Every multi-turn category's ground-truth conversations replay as demonstrations: each gold
/// call in its own assistant turn, run in the episode's session, its result forced, the user's
/// next turn forced after a closing reply.
#[test]
fn bfcl_ground_truth_conversations_replay_as_demonstrations() {
    let dir = data_dir().expect("set-up installs bfcl-eval");
    let p = protocol(32_000);
    for category in MULTI_CATEGORIES {
        let source = StatefulSource::bfcl(&dir, &[category.to_string()], 0, None).unwrap();
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        let mut kept = 0;
        let mut first: Option<String> = None;
        for split in [Split::Train, Split::Heldout] {
            for i in 0..source.len(split) {
                let item = source.item(split, i as u64);
                match p.demonstration(&source, &item) {
                    Ok(_) => kept += 1,
                    Err(e) => {
                        *reasons.entry(e.reason().to_string()).or_default() += 1;
                        if first.is_none() {
                            first = Some(format!("{}: {e}", source.item_id(&item).unwrap()));
                        }
                    }
                }
            }
        }
        eprintln!("{category}: {kept} of 200 kept; dropped {reasons:?}; first: {first:?}");
        assert_eq!(source.open_sessions().unwrap(), 0, "{category}");
        // Dropped: a ground truth that calls a function before it is offered (miss_func_49),
        // a string where the documentation says integer (a ticket id), and in long_context
        // conversations whose tool results pass 32,000 tokens.
        let least = if category.contains("long_context") {
            155
        } else {
            197
        };
        assert!(
            kept >= least,
            "{category}: {kept} kept, {reasons:?}, {first:?}"
        );
    }
}

/// The first task of `category` that involves `class`.
fn task_with(source: &StatefulSource, class: &str) -> asymre::env::tool_use::stateful::StatefulRef {
    (0..source.len(Split::Train) as u64)
        .map(|i| source.item(Split::Train, i))
        .find(|it| source.entry(it).classes.iter().any(|c| c == class))
        .expect("a task with the class")
}

/// Two episodes of one batch on the same worker keep separate file systems; a worker killed
/// mid-episode answers that episode's calls with tool errors, counted, and the next episodes
/// play on a fresh worker; every session is closed at the end (the count returns to zero).
#[test]
fn episodes_keep_their_own_state_and_a_killed_worker_is_a_tool_error() {
    use asymre::env::tool_use::reward::Call;
    use asymre::env::ToolSet;
    let dir = data_dir().expect("set-up installs bfcl-eval");
    let source = StatefulSource::bfcl(&dir, &["multi_turn_base".to_string()], 0, None).unwrap();
    let item = task_with(&source, "GorillaFileSystem");
    let begun = source.begin(vec![item, item]);
    assert_ne!(begun[0].session, begun[1].session);
    assert_eq!(source.open_sessions().unwrap(), 2);
    let touch = Call::new("touch", &[("file_name", "only_in_a.txt")]);
    let ls = Call::new("ls", &[]);
    let got = source.execute_batch(&[(&begun[0], &touch)]);
    assert!(got[0].is_ok(), "{got:?}");
    let got = source.execute_batch(&[(&begun[0], &ls), (&begun[1], &ls)]);
    let (a, b) = (got[0].as_ref().unwrap(), got[1].as_ref().unwrap());
    assert!(a.contains("only_in_a.txt"), "{a}");
    assert!(!b.contains("only_in_a.txt"), "{b}");
    source.end(begun.iter().map(|i| (i, None)).collect());
    assert_eq!(source.open_sessions().unwrap(), 0);

    // A crash mid-episode: both open episodes lose their state as tool errors.
    let begun = source.begin(vec![item, item]);
    source.kill_worker();
    let got = source.execute_batch(&[(&begun[0], &ls), (&begun[1], &ls)]);
    for g in &got {
        assert!(g.as_ref().unwrap_err().contains("was lost"), "{got:?}");
    }
    assert_eq!(source.sessions_lost(), 2);
    source.end(begun.iter().map(|i| (i, None)).collect());
    // The next episodes play on a fresh worker.
    let again = source.begin(vec![item]);
    assert!(source.execute(&again[0], &ls).is_ok());
    source.end(vec![(&again[0], None)]);
    assert_eq!(source.open_sessions().unwrap(), 0);
}

/// The to-do example's tasks with its class served by `scripts/pytools.py`.
fn todo(path: &std::path::Path) -> StatefulSource {
    use asymre::env::tool_use::stateful::WorkerSpec;
    let worker = WorkerSpec {
        command: vec![
            "python3".into(),
            root().join("scripts/pytools.py").display().to_string(),
            root()
                .join("examples/todo/todo_tools.py")
                .display()
                .to_string(),
            "--class".into(),
            "TodoList".into(),
        ],
        timeout: std::time::Duration::from_secs(30),
        stderr_log: None,
    };
    StatefulSource::from_lines(path, worker, 0).unwrap()
}

type Ep = asymre::env::tool_use::protocol::chat::ChatEpisode<
    asymre::env::tool_use::stateful::StatefulRef,
>;

/// Writes `text` and then `<|im_end|>` as the policy, taking forced tokens as an actor does.
fn say(ep: &mut Ep, source: &StatefulSource, f: &ChatFormat, text: &str) {
    let mut ids = f.tokenizer.encode_with(text, false).unwrap();
    ids.push(f.tokenizer.token_to_id("<|im_end|>").unwrap());
    for id in ids {
        while ep.take_forced().is_some() {}
        ep.push_policy(id, source);
    }
    while ep.take_forced().is_some() {}
}

fn call(name: &str, args: &str) -> String {
    format!("<tool_call>\n{{\"name\": \"{name}\", \"arguments\": {args}}}\n</tool_call>")
}

/// A conversation of three user turns: each later user turn is forced (masked out) when the
/// assistant ends a turn without a call, the calls of each turn run in the episode's own to-do
/// list, and the state rule grades every turn; a wrong call fails its turn and the episode.
#[test]
fn later_user_turns_are_forced_and_each_turn_is_graded_by_the_state_rule() {
    use asymre::env::tool_use::reward::{score, RewardConfig};
    use asymre::env::ToolSet;
    let p = protocol(4000);
    let f = p.format.clone();
    let source = todo(&root().join("examples/todo/tasks.jsonl"));
    let item = source.item(Split::Train, 0);
    let entry = source.entry(&item).clone();
    let gold = source.gold(&item).unwrap();
    // The ground truth's calls, as JSON, per turn.
    let asymre::env::tool_use::reward::AnswerRule::Turns(turns) = &gold.rule else {
        panic!("a state rule")
    };
    assert_eq!(turns.len(), 3);
    let play = |wrong: bool| -> Ep {
        let begun = source.begin(vec![item]).pop().unwrap();
        let mut ep: Ep = Protocol::<StatefulSource>::start(&p, &source, begun).unwrap();
        for (t, calls) in turns.iter().enumerate() {
            for (name, args) in calls {
                let mut args = args.clone();
                if wrong && t == 1 {
                    args["item"] = serde_json::json!("not on the list");
                }
                say(&mut ep, &source, &f, &call(name, &args.to_string()));
                assert!(!ep.done);
            }
            say(&mut ep, &source, &f, "Done.");
        }
        assert!(ep.done);
        let mut attempt = ep.attempt.clone();
        source.end(vec![(&ep.item, Some(&mut attempt))]);
        ep.attempt = attempt;
        ep
    };
    let ep = play(false);
    assert_eq!(
        ep.attempt.turn_ends,
        vec![1, 2 + turns[1].len() - 1, ep.attempt.raw_calls.len()]
    );
    let graded = ep.attempt.graded.clone().expect("graded");
    assert!(graded.valid, "{graded:?}");
    let s = score(&RewardConfig::default(), &ep.attempt, &gold);
    assert_eq!((s.completion, s.f1), (1.0, 1.0));
    // Each later user turn is in the sequence, forced, never the policy's.
    let users: Vec<&serde_json::Value> =
        ep.messages.iter().filter(|m| m["role"] == "user").collect();
    assert_eq!(users.len(), 3);
    let text = f.tokenizer.decode_with(&ep.tokens, false);
    for turn in &entry.turns[1..] {
        let said = turn[0]["content"].as_str().unwrap();
        let at = text.find(said).expect("the user's turn is in the sequence");
        let ids_before = f.tokenizer.encode_with(&text[..at], false).unwrap().len();
        assert!(
            !ep.policy_mask[ids_before.saturating_sub(2)..ids_before + 2]
                .iter()
                .any(|&m| m)
        );
    }
    assert_eq!(source.open_sessions().unwrap(), 0);

    // A wrong item in turn 2: that turn fails (the tool's error is its result), turn 1 stands.
    let ep = play(true);
    let graded = ep.attempt.graded.clone().expect("graded");
    assert!(!graded.valid);
    assert_eq!(graded.turns[..2], [true, false]);
    let s = score(&RewardConfig::default(), &ep.attempt, &gold);
    assert_eq!(s.completion, 0.0);
    assert!(s.f1 > 0.0 && s.f1 < 1.0, "{s:?}");
}

/// Functions held back (`missed_function`) are not offered at first, calling one is an unknown
/// tool; at their turn they are listed to the user's message with BFCL's sentence and then
/// work. Functions in `excluded_function` are never offered.
#[test]
fn held_back_functions_are_offered_at_their_turn_and_excluded_ones_never() {
    use asymre::env::ToolSet;
    let p = protocol(4000);
    let f = p.format.clone();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("tasks.jsonl");
    let line = serde_json::json!({
        "id": "held", "question": ["Add 'buy milk'.", [], "Thanks."],
        "initial_config": {"TodoList": {"items": ["pay rent"]}},
        "involved_classes": ["TodoList"],
        "missed_function": {"1": ["remove_item"]},
        "excluded_function": ["complete_item"],
        "ground_truth": [["add_item(item='buy milk')"], ["remove_item('pay rent')"], []],
    });
    std::fs::write(&path, format!("{line}\n")).unwrap();
    let source = todo(&path);
    let item = source.item(Split::Train, 0);
    let names: Vec<String> = source.tools(&item).into_iter().map(|t| t.name).collect();
    assert_eq!(names, ["add_item", "list_items"]);
    let begun = source.begin(vec![item]).pop().unwrap();
    let mut ep: Ep = Protocol::<StatefulSource>::start(&p, &source, begun).unwrap();
    assert!(!f
        .tokenizer
        .decode_with(&ep.tokens, false)
        .contains("remove_item"));
    say(
        &mut ep,
        &source,
        &f,
        &call("remove_item", r#"{"item": "pay rent"}"#),
    );
    assert_eq!(ep.attempt.format_errors, 1, "not offered yet");
    say(
        &mut ep,
        &source,
        &f,
        &call("add_item", r#"{"item": "buy milk"}"#),
    );
    say(&mut ep, &source, &f, "Done.");
    let text = f.tokenizer.decode_with(&ep.tokens, false);
    let listed = text.rfind("remove_item").expect("offered at turn 2");
    assert!(text[listed..].contains(asymre::env::tool_use::protocol::chat::MORE_FUNCTIONS));
    say(
        &mut ep,
        &source,
        &f,
        &call("remove_item", r#"{"item": "pay rent"}"#),
    );
    assert_eq!(ep.attempt.format_errors, 1, "offered now");
    say(
        &mut ep,
        &source,
        &f,
        &call("complete_item", r#"{"item": "buy milk"}"#),
    );
    assert_eq!(ep.attempt.format_errors, 2, "never offered");
    say(&mut ep, &source, &f, "Done.");
    say(&mut ep, &source, &f, "You're welcome.");
    assert!(ep.done);
    let mut attempt = ep.attempt.clone();
    asymre::env::ToolSet::end(&source, vec![(&ep.item, Some(&mut attempt))]);
    let graded = attempt.graded.expect("graded");
    assert!(graded.valid, "{graded:?}");
}
