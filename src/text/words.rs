//! The token vocabulary shared by every tool-use task. Words of the protocol and prompts are single
//! tokens; numbers are spelled digit by digit (with a leading `-`), and entities as `e` followed by
//! digits, so an unseen entity or number is made of tokens the policy already knows.
use std::collections::HashMap;
use std::sync::OnceLock;

use super::Tokenizer;

pub const PAD: u32 = 0;
pub const BOS: u32 = 1;
pub const EOS: u32 = 2;
pub const CALL: u32 = 3;
pub const END_CALL: u32 = 4;
pub const RES: u32 = 5;
pub const END_RES: u32 = 6;
pub const ANS: u32 = 7;
pub const ERR: u32 = 8;

/// Every token, in id order.
const WORDS: &[&str] = &[
    "<pad>", "<bos>", "<eos>", "CALL", "/CALL", "RES", "/RES", "ANS", "ERR", // protocol
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "-", "e", // numbers and entity ids
    "add", "sub", "mul", "div", "get", "sum", "max", // tools
    "a", "b", "c", "ent", "attr", // argument names
    "age", "height", "score", "weight", "boss", "friend", // attributes
    "what", "is", "the", "of", "and", "+", "−", "*", "/", "?", "tools", "=", ";", // prompts
    "t0", "t1", "t2", "t3", "t4", "t5", "t6", "t7", // menu ids
];

/// Number of tokens.
pub fn size() -> usize {
    WORDS.len()
}

fn index() -> &'static HashMap<&'static str, u32> {
    static INDEX: OnceLock<HashMap<&'static str, u32>> = OnceLock::new();
    INDEX.get_or_init(|| {
        WORDS
            .iter()
            .enumerate()
            .map(|(i, w)| (*w, i as u32))
            .collect()
    })
}

/// The id of a single-token word.
pub fn id(word: &str) -> Option<u32> {
    index().get(word).copied()
}

/// The word of a token id.
pub fn word(id: u32) -> &'static str {
    WORDS.get(id as usize).copied().unwrap_or("<unk>")
}

pub fn is_digit(id: u32) -> bool {
    (9..=18).contains(&id)
}

/// Tokens of one word of text: a single token, a signed integer, or an entity `e<digits>`.
pub fn encode_word(word: &str, out: &mut Vec<u32>) -> Result<(), String> {
    if let Some(t) = id(word) {
        out.push(t);
        return Ok(());
    }
    let (prefix, digits) = match word.strip_prefix('-') {
        Some(rest) => (Some("-"), rest),
        None => match word.strip_prefix('e') {
            Some(rest) => (Some("e"), rest),
            None => (None, word),
        },
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("unknown word {word:?}"));
    }
    if let Some(p) = prefix {
        out.push(id(p).expect("'-' and 'e' are tokens"));
    }
    out.extend(digits.bytes().map(|b| 9 + (b - b'0') as u32));
    Ok(())
}

/// Tokens of whitespace-separated text.
pub fn encode(text: &str) -> Result<Vec<u32>, String> {
    let mut out = Vec::new();
    for w in text.split_whitespace() {
        encode_word(w, &mut out)?;
    }
    Ok(out)
}

/// Text of tokens, with numbers and entity ids joined back into words.
pub fn decode(tokens: &[u32]) -> String {
    let mut words: Vec<String> = Vec::new();
    let mut glue = false;
    for &t in tokens {
        let w = word(t);
        if is_digit(t) && glue {
            words.last_mut().expect("glue implies a word").push_str(w);
        } else {
            words.push(w.to_string());
        }
        glue = is_digit(t) || w == "-" || w == "e";
    }
    words.join(" ")
}

/// The vocabulary as a [`Tokenizer`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Words;

impl Tokenizer for Words {
    fn vocab_size(&self) -> usize {
        size()
    }

    fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        encode(text)
    }

    fn decode(&self, ids: &[u32]) -> String {
        decode(ids)
    }

    fn eos(&self) -> u32 {
        EOS
    }

    fn pad(&self) -> u32 {
        PAD
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_numbers_and_entities_round_trip() {
        let text = "what is the age of e17 ? CALL get ent e17 attr age /CALL RES -42 /RES ANS 305";
        let tokens = encode(text).unwrap();
        assert_eq!(decode(&tokens), text);
        assert_eq!(encode("e17").unwrap(), vec![id("e").unwrap(), 10, 16]);
        assert_eq!(encode("-5").unwrap(), vec![id("-").unwrap(), 14]);
        assert!(encode("banana").is_err());
        assert!(encode("e").is_ok(), "a bare e is the token itself");
    }

    #[test]
    fn ids_are_fixed() {
        assert_eq!(word(CALL), "CALL");
        assert_eq!(word(END_RES), "/RES");
        assert_eq!(id("0"), Some(9));
        assert_eq!(id("9"), Some(18));
        assert_eq!(WORDS.len(), index().len(), "no duplicate words");
    }
}
