//! OpenAI's CLIP byte-pair tokenizer (vocabulary from `instant-clip-tokenizer`, byte-identical to
//! OpenAI's), producing the fixed 77-token sequences the text tower reads.

use instant_clip_tokenizer::{Token, Tokenizer};

pub const CONTEXT_LENGTH: usize = 77;

#[derive(Debug, thiserror::Error)]
#[error("text is {tokens} tokens long, more than the {max} a CLIP context holds: {text:?}")]
pub struct TokenizeError {
    pub text: String,
    pub tokens: usize,
    pub max: usize,
}

pub struct ClipTokenizer {
    inner: Tokenizer,
}

impl Default for ClipTokenizer {
    fn default() -> Self {
        Self::new()
    }
}

impl ClipTokenizer {
    pub fn new() -> Self {
        Self {
            inner: Tokenizer::new(),
        }
    }

    /// `[SOT, tokens…, EOT, 0…]`, 77 ids. Text too long for the context is an error rather than
    /// being cut, because a cut prompt silently loses its EOT feature.
    pub fn tokenize(&self, text: &str) -> Result<Vec<i64>, TokenizeError> {
        let mut tokens: Vec<Token> = vec![self.inner.start_of_text()];
        self.inner.encode(text, &mut tokens);
        tokens.push(self.inner.end_of_text());
        if tokens.len() > CONTEXT_LENGTH {
            return Err(TokenizeError {
                text: text.into(),
                tokens: tokens.len(),
                max: CONTEXT_LENGTH,
            });
        }
        let mut ids: Vec<i64> = tokens.into_iter().map(|t| i64::from(t.to_u16())).collect();
        ids.resize(CONTEXT_LENGTH, 0);
        Ok(ids)
    }
}
