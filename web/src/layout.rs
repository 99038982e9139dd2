//! The hybrid sequence layout the page shows and sends with each image, computed by
//! `htc-shared`'s [`MaskLayout`] (the same code the worker builds its attention mask with), so
//! page and worker cannot disagree; the worker checks the layout it receives.

use htc_shared::config::HtcMode;
use htc_shared::mask::{MaskLayout, Topology};
use htc_shared::protocol::ModelCard;

/// The paper's image prefix: BOS, 4 MGVQ anchor tokens, the 576 CLIP ViT-L/14-336 patch tokens
/// and one `<voco>` token; the question follows.
pub const PAPER_LAYOUT: MaskLayout =
    MaskLayout { bos: true, n_discrete: 4, n_visual: 576, n_voco: 1, n_text: 0 };

/// The paper's mask topology: each visual token sees only itself.
pub const PAPER_TOPOLOGY: Topology = Topology::Star;

/// The served model's image prefix, from its card, for the paper's mode (`htc`: anchors,
/// patches, `<voco>`); `None` for other modes, whose sequences the card does not describe
/// segment by segment.
pub fn model_layout(card: &ModelCard) -> Option<MaskLayout> {
    (card.mode == Some(HtcMode::Htc)).then_some(MaskLayout {
        bos: true,
        n_discrete: card.n_discrete,
        n_visual: card.image_tokens,
        n_voco: card.n_voco,
        n_text: 0,
    })
}

/// The topology's name as configs and the CLI spell it.
pub fn topology_name(topology: Topology) -> &'static str {
    match topology {
        Topology::Star => "star",
        Topology::Causal => "causal",
        Topology::Full => "full",
    }
}

fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The positions before the question, segment by segment, e.g.
/// `BOS + 4 anchors + 576 patches + 1 <voco> = 582 positions before the question`.
pub fn describe(layout: &MaskLayout) -> String {
    let mut parts = Vec::new();
    if layout.bos {
        parts.push("BOS".to_string());
    }
    if layout.n_discrete > 0 {
        parts.push(count(layout.n_discrete, "anchor", "anchors"));
    }
    if layout.n_visual > 0 {
        parts.push(count(layout.n_visual, "patch", "patches"));
    }
    parts.push(format!("{} <voco>", layout.n_voco));
    let before_question = layout.text_start();
    format!("{} = {} before the question", parts.join(" + "), count(before_question, "position", "positions"))
}

/// How many of the positions before the question a question token may attend to under
/// `topology`, as the shared mask decides.
pub fn question_reads(layout: &MaskLayout, topology: Topology) -> usize {
    let with_question = MaskLayout { n_text: layout.n_text + 1, ..*layout };
    let q = with_question.len() - 1;
    (0..layout.text_start()).filter(|&k| with_question.allowed(topology, q, k)).count()
}

/// What a question token sees under `topology`, e.g. `a question token reads 2 of the 582
/// positions before it (BOS and <voco>); the 580 anchor and patch tokens reach it only through
/// <voco>`.
pub fn describe_question_view(layout: &MaskLayout, topology: Topology) -> String {
    let visual = layout.voco_start() - layout.bos as usize;
    let voco = if layout.n_voco == 1 {
        "<voco>".to_string()
    } else {
        format!("the {} <voco> tokens", layout.n_voco)
    };
    let read = if layout.bos { format!("BOS and {voco}") } else { voco.clone() };
    format!(
        "a question token reads {} of the {} positions before it ({read}); the {visual} anchor and \
         patch tokens reach it only through {voco}",
        question_reads(layout, topology),
        layout.text_start(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_layout_reads_as_in_the_paper() {
        assert_eq!(
            describe(&PAPER_LAYOUT),
            "BOS + 4 anchors + 576 patches + 1 <voco> = 582 positions before the question"
        );
        assert_eq!(PAPER_LAYOUT.voco_start(), 581);
    }

    #[test]
    fn a_question_reads_bos_and_voco_only_in_every_topology() {
        for t in [Topology::Star, Topology::Causal, Topology::Full] {
            assert_eq!(question_reads(&PAPER_LAYOUT, t), 2, "{}", topology_name(t));
        }
        let two_voco = MaskLayout { bos: false, n_voco: 2, ..PAPER_LAYOUT };
        assert_eq!(question_reads(&two_voco, Topology::Star), 2);
        assert_eq!(
            describe(&two_voco),
            "4 anchors + 576 patches + 2 <voco> = 582 positions before the question"
        );
    }

    #[test]
    fn question_view_counts_what_the_mask_allows() {
        assert_eq!(
            describe_question_view(&PAPER_LAYOUT, PAPER_TOPOLOGY),
            "a question token reads 2 of the 582 positions before it (BOS and <voco>); the 580 anchor and \
             patch tokens reach it only through <voco>"
        );
    }

    #[test]
    fn the_served_models_layout_comes_from_its_card_in_htc_mode_only() {
        let mut card: ModelCard = serde_json::from_value(serde_json::json!({
            "name": "m", "architecture": "htc", "random_init": false, "backend": "cpu", "mode": "htc",
            "n_discrete": 4, "n_voco": 1, "image_size": 168, "image_tokens": 9, "hidden_size": 192,
            "layers": 4, "vocab_size": 128, "has_tokenizer": true, "mgvq": null, "codebook_size": null
        }))
        .unwrap();
        let l = model_layout(&card).unwrap();
        assert_eq!(describe(&l), "BOS + 4 anchors + 9 patches + 1 <voco> = 15 positions before the question");
        card.mode = Some(HtcMode::None);
        assert_eq!(model_layout(&card), None);
    }
}
