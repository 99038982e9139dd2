//! The app's state and its rules, free of the DOM so they run in native tests, one module per
//! concern:
//!
//! - [`conversation`]: the turns, fed by the worker's messages, and the worker's errors in
//!   words;
//! - [`connection`]: where the connection stands, the reconnect backoff, the model card URL;
//! - [`encoder`]: the in-browser encoder as the status shows it, and who tokenised the image;
//! - [`settings`]: the settings, their validation and the socket URL;
//! - [`modes`]: the mode a question goes in (the settings' choice, the compare switch);
//! - [`attention`]: the attention maps reduced to what the page draws;
//! - [`files`]: the image files the page accepts, and the downscaling of large photos.
//!
//! Their items are re-exported here: `crate::state::Settings` and so on.

pub mod attention;
pub mod connection;
pub mod conversation;
pub mod encoder;
pub mod files;
pub mod modes;
pub mod settings;

pub use attention::{AttentionMaps, AttentionView, LayerPick};
pub use connection::{backoff_ms, model_card_url, Connection};
pub use conversation::{error_words, Conversation, Turn, TurnStatus};
pub use encoder::{tokenised_words, EncoderState};
pub use files::{check_image_file, downscaled};
pub use modes::{asked_mode, compare_mode};
pub use settings::{BackendChoice, Settings};
