//! The mode a question is asked in: the compare switch's extra mode, and the mode chosen in
//! the settings where the model offers it.

/// The mode the compare switch adds for this model: `none` (all patches), when the model
/// answers in a compressed mode and offers `none` beside it.
pub fn compare_mode(card: &htc_shared::protocol::ModelCard) -> Option<htc_shared::config::HtcMode> {
    use htc_shared::config::HtcMode;
    (card.mode != Some(HtcMode::None) && card.modes.contains(&HtcMode::None)).then_some(HtcMode::None)
}

/// The mode a question goes in: the one chosen in the settings when this model offers it and
/// it is not the model's own, else `None` (the model's own; a mode chosen for another model
/// is ignored).
pub fn asked_mode(
    chosen: Option<htc_shared::config::HtcMode>, card: &htc_shared::protocol::ModelCard,
) -> Option<htc_shared::config::HtcMode> {
    chosen.filter(|m| card.modes.contains(m) && card.mode != Some(*m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Settings;

    #[test]
    fn the_chosen_mode_applies_only_where_the_model_offers_it() {
        use htc_shared::config::HtcMode;
        let card: htc_shared::protocol::ModelCard = serde_json::from_value(serde_json::json!({
            "name": "m", "architecture": "htc", "random_init": false, "backend": "cpu", "mode": "htc",
            "n_discrete": 4, "n_voco": 1, "image_size": 168, "image_tokens": 9, "hidden_size": 192,
            "layers": 4, "vocab_size": 128, "has_tokenizer": true, "mgvq": null, "codebook_size": null,
            "modes": ["htc", "none"]
        }))
        .unwrap();
        assert_eq!(asked_mode(Some(HtcMode::None), &card), Some(HtcMode::None));
        assert_eq!(asked_mode(Some(HtcMode::Htc), &card), None, "the model's own mode");
        assert_eq!(asked_mode(Some(HtcMode::Voco), &card), None, "not offered by this model");
        assert_eq!(asked_mode(None, &card), None);
        // Stored settings without a mode (older pages) still load.
        let old = Settings::from_stored(Some(r#"{"temperature": 0.5}"#));
        assert_eq!((old.mode, old.temperature), (None, 0.5));
        let s = Settings { mode: Some(HtcMode::None), ..Settings::default() };
        assert_eq!(
            Settings::from_stored(Some(&serde_json::to_string(&s).unwrap())).mode,
            Some(HtcMode::None)
        );
    }
}
