//! Tokenizers: text to token ids and back. [`Tokenizer`] is what a policy's vocabulary comes
//! from; [`words::Words`] is the 60-word vocabulary of the tool-use protocol (numbers spelled
//! digit by digit), which the small transformer uses.
pub mod chat;
pub mod hf;
pub mod words;

/// Text to token ids and back, with the ids a sequence policy needs to know.
pub trait Tokenizer: Send + Sync {
    /// Ids run from 0 to `vocab_size() - 1`.
    fn vocab_size(&self) -> usize;
    /// The ids of `text`, or an error naming what cannot be encoded.
    fn encode(&self, text: &str) -> Result<Vec<u32>, String>;
    /// The text of `ids`.
    fn decode(&self, ids: &[u32]) -> String;
    /// The id that ends a sequence.
    fn eos(&self) -> u32;
    /// The id that pads a batch.
    fn pad(&self) -> u32;
}

/// The text side of a pretrained model: its tokenizer and chat template (if it has one).
pub struct ModelText {
    pub tokenizer: hf::HfTokenizer,
    pub template: Option<chat::ChatTemplate>,
}
