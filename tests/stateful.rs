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
        let least = if category.contains("long_context") { 155 } else { 197 };
        assert!(kept >= least, "{category}: {kept} kept, {reasons:?}, {first:?}");
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
    let source =
        StatefulSource::bfcl(&dir, &["multi_turn_base".to_string()], 0, None).unwrap();
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
