//! The text side of a model: chat [`template`]s, the [`tokenizer`] with its stop ids, and
//! [`stream`]ing detokenisation. Text only: no tensors, models or files beyond the tokenizer's.

pub mod stream;
pub mod template;
pub mod tokenizer;
pub mod vocab;

pub use stream::StreamDecoder;
pub use template::{Chat, Role, Template, VICUNA_SYSTEM};
pub use tokenizer::{stop_ids, TextTokenizer};
