//! The disentanglement attention mask over the hybrid sequence
//! `[BOS][v_d × N_d][V × N_v][<voco> × k][text …]`, built in pure Rust so the browser can
//! build and draw it and the worker can apply it.
//!
//! In every topology `<voco>` sees BOS, every visual token and the earlier `<voco>` tokens,
//! and text sees BOS, the `<voco>` token(s) and earlier text, never a raw visual token. The
//! topologies differ only in what visual tokens (`v_d` and `V` together) see:
//! - [`Topology::Star`] (the paper): each visual token sees only itself;
//! - [`Topology::Causal`] (VoCo-LLaMA's code): BOS and the visual tokens up to itself;
//! - [`Topology::Full`] (the paper's Table 12 ablation): BOS and every visual token.

use serde::{Deserialize, Serialize};

use crate::Error;

/// What visual tokens may attend to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Topology {
    Star,
    Causal,
    Full,
}

impl std::str::FromStr for Topology {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "star" => Ok(Self::Star),
            "causal" => Ok(Self::Causal),
            "full" => Ok(Self::Full),
            other => {
                Err(Error::Config(format!("unknown mask topology `{other}` (expected star, causal or full)")))
            }
        }
    }
}

/// The role of a sequence position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Bos,
    /// A discrete anchor token `v_d`.
    Discrete,
    /// A continuous patch token of `V`.
    Visual,
    Voco,
    Text,
}

impl Role {
    /// `v_d` and `V`: the tokens only `<voco>` may read.
    pub fn is_visual(self) -> bool {
        matches!(self, Role::Discrete | Role::Visual)
    }
}

/// Sizes of the hybrid sequence's segments, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaskLayout {
    pub bos: bool,
    pub n_discrete: usize,
    pub n_visual: usize,
    pub n_voco: usize,
    pub n_text: usize,
}

/// Additive mask value for a blocked (query, key) pair.
pub const BLOCKED: f32 = f32::MIN;

impl MaskLayout {
    pub fn len(&self) -> usize {
        self.bos as usize + self.n_discrete + self.n_visual + self.n_voco + self.n_text
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Index of the first `<voco>` token.
    pub fn voco_start(&self) -> usize {
        self.bos as usize + self.n_discrete + self.n_visual
    }

    /// Index of the first text token.
    pub fn text_start(&self) -> usize {
        self.voco_start() + self.n_voco
    }

    pub fn role(&self, i: usize) -> Role {
        let b = self.bos as usize;
        if i < b {
            Role::Bos
        } else if i < b + self.n_discrete {
            Role::Discrete
        } else if i < self.voco_start() {
            Role::Visual
        } else if i < self.text_start() {
            Role::Voco
        } else {
            Role::Text
        }
    }

    /// Whether query position `q` may attend to key position `k`.
    pub fn allowed(&self, topology: Topology, q: usize, k: usize) -> bool {
        let (rq, rk) = (self.role(q), self.role(k));
        match rq {
            Role::Bos => k == q,
            Role::Discrete | Role::Visual => match topology {
                Topology::Star => k == q,
                Topology::Causal => k <= q && (rk == Role::Bos || rk.is_visual()),
                Topology::Full => rk == Role::Bos || rk.is_visual(),
            },
            Role::Voco => k <= q && matches!(rk, Role::Bos | Role::Discrete | Role::Visual | Role::Voco),
            Role::Text => k <= q && matches!(rk, Role::Bos | Role::Voco | Role::Text),
        }
    }

    /// The additive mask `[len, len]`, row-major: 0 where allowed, [`BLOCKED`] elsewhere.
    pub fn additive(&self, topology: Topology) -> Vec<f32> {
        let n = self.len();
        let mut m = vec![BLOCKED; n * n];
        for q in 0..n {
            for k in 0..n {
                if self.allowed(topology, q, k) {
                    m[q * n + k] = 0.0;
                }
            }
        }
        m
    }

    /// The additive mask of text queries only, over the keys a compressed image keeps
    /// (BOS, then the `<voco>` tokens) followed by the text: `[n_text, kept + n_text]`.
    pub fn text_rows_over_kept(&self, topology: Topology) -> (Vec<usize>, Vec<f32>) {
        let kept: Vec<usize> = (0..self.bos as usize).chain(self.voco_start()..self.text_start()).collect();
        let keys: Vec<usize> = kept.iter().copied().chain(self.text_start()..self.len()).collect();
        let mut m = Vec::with_capacity(self.n_text * keys.len());
        for q in self.text_start()..self.len() {
            for &k in &keys {
                m.push(if self.allowed(topology, q, k) { 0.0 } else { BLOCKED });
            }
        }
        (kept, m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn layouts() -> impl Strategy<Value = MaskLayout> {
        (any::<bool>(), 0usize..9, 0usize..24, 1usize..4, 0usize..12).prop_map(
            |(bos, n_discrete, n_visual, n_voco, n_text)| MaskLayout {
                bos,
                n_discrete,
                n_visual,
                n_voco,
                n_text,
            },
        )
    }

    fn topologies() -> impl Strategy<Value = Topology> {
        prop_oneof![Just(Topology::Star), Just(Topology::Causal), Just(Topology::Full)]
    }

    proptest! {
        #[test]
        fn text_never_sees_a_visual_token(l in layouts(), t in topologies()) {
            for q in l.text_start()..l.len() {
                for k in 0..l.len() {
                    if l.role(k).is_visual() {
                        prop_assert!(!l.allowed(t, q, k), "text {q} sees visual {k}");
                    }
                }
            }
        }

        #[test]
        fn text_sees_bos_every_voco_and_earlier_text(l in layouts(), t in topologies()) {
            for q in l.text_start()..l.len() {
                if l.bos { prop_assert!(l.allowed(t, q, 0)); }
                for k in l.voco_start()..l.text_start() { prop_assert!(l.allowed(t, q, k)); }
                for k in l.text_start()..l.len() { prop_assert_eq!(l.allowed(t, q, k), k <= q); }
            }
        }

        #[test]
        fn voco_sees_bos_and_all_visual_tokens(l in layouts(), t in topologies()) {
            for q in l.voco_start()..l.text_start() {
                for k in 0..l.len() {
                    let want = match l.role(k) {
                        Role::Bos | Role::Discrete | Role::Visual => true,
                        Role::Voco => k <= q,
                        Role::Text => false,
                    };
                    prop_assert_eq!(l.allowed(t, q, k), want, "voco {} key {}", q, k);
                }
            }
        }

        #[test]
        fn visual_rows_follow_the_topology(l in layouts(), t in topologies()) {
            let b = l.bos as usize;
            for q in b..l.voco_start() {
                for k in 0..l.len() {
                    let rk = l.role(k);
                    let want = match t {
                        Topology::Star => k == q,
                        Topology::Causal => k <= q && (rk == Role::Bos || rk.is_visual()),
                        Topology::Full => rk == Role::Bos || rk.is_visual(),
                    };
                    prop_assert_eq!(l.allowed(t, q, k), want, "{:?} visual {} key {}", t, q, k);
                }
            }
        }

        #[test]
        fn every_row_sees_itself_and_only_full_looks_ahead(l in layouts(), t in topologies()) {
            for q in 0..l.len() {
                prop_assert!(l.allowed(t, q, q));
                for k in q + 1..l.len() {
                    if l.allowed(t, q, k) {
                        prop_assert!(t == Topology::Full && l.role(q).is_visual() && l.role(k).is_visual());
                    }
                }
            }
        }

        #[test]
        fn additive_and_kept_masks_agree_with_allowed(l in layouts(), t in topologies()) {
            let n = l.len();
            let m = l.additive(t);
            for q in 0..n { for k in 0..n {
                prop_assert_eq!(m[q * n + k] == 0.0, l.allowed(t, q, k));
            }}
            let (kept, rows) = l.text_rows_over_kept(t);
            prop_assert_eq!(kept.len(), l.bos as usize + l.n_voco);
            prop_assert_eq!(rows.len(), l.n_text * (kept.len() + l.n_text));
            // Over the kept keys every text row is open (BOS and voco) or causal (text).
            let w = kept.len() + l.n_text;
            for i in 0..l.n_text {
                for j in 0..w {
                    let open = rows[i * w + j] == 0.0;
                    prop_assert_eq!(open, j < kept.len() || j - kept.len() <= i);
                }
            }
        }
    }

    #[test]
    fn topology_names_parse() {
        assert_eq!("star".parse::<Topology>().unwrap(), Topology::Star);
        let e = "diagonal".parse::<Topology>().unwrap_err();
        assert!(e.to_string().contains("unknown mask topology `diagonal`"));
    }

    #[test]
    fn paper_layout_has_582_positions_before_text() {
        let l = MaskLayout { bos: true, n_discrete: 4, n_visual: 576, n_voco: 1, n_text: 0 };
        assert_eq!(l.len(), 582);
        assert_eq!(l.voco_start(), 581);
        assert_eq!(l.role(1), Role::Discrete);
        assert_eq!(l.role(5), Role::Visual);
    }
}
