//! The image the user chose: taking a new one (the conversation starts over, the encoder
//! encodes it) and removing it.

use leptos::prelude::*;

use super::{ChosenImage, Session};
use crate::state::Conversation;

impl Session {
    /// Takes a new image: the conversation starts over.
    pub fn set_image(self, image: ChosenImage, bytes: Vec<u8>) {
        self.stop();
        if let Some(old) = self.image.get_untracked() {
            let _ = web_sys::Url::revoke_object_url(&old.url);
        }
        self.codes.set(None);
        self.encode(&image.id, &bytes);
        self.image_bytes.set_value(Some(bytes));
        self.sent_image.set_value(None);
        self.image.set(Some(image));
        self.image_error.set(None);
        self.notice.set(None);
        self.conversation.set(Conversation::default());
    }

    pub fn remove_image(self) {
        self.stop();
        if let Some(old) = self.image.get_untracked() {
            let _ = web_sys::Url::revoke_object_url(&old.url);
        }
        self.image_bytes.set_value(None);
        self.codes.set(None);
        self.encoding.set_value(None);
        self.image.set(None);
        self.conversation.set(Conversation::default());
    }
}
