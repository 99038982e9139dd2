//! The experiments' fixed vocabulary in one place: every arm `scripts/experiments.sh` trains
//! (what it is and the paper's number for it), the groups the page compares them in, and the
//! paper's probing numbers (Table 3). Nothing here is measured.

/// The upper bound: every patch visible. Retention is measured against it.
pub const UPPER: &str = "none";
/// The lower bound: a blank image.
pub const LOWER: &str = "blank";
/// The paper's default configuration, the reference arm of every comparison.
pub const DEFAULT: &str = "htc";
/// The arm that evaluates `htc` with another image's anchors (a control, no paper row).
pub const SHUFFLED: &str = "htc-anchors-shuffled";

/// One trained (or evaluated) variant.
pub struct Arm {
    /// The directory name under `runs/`, `probe/`, `attention/` and the `cost/` file name.
    pub name: &'static str,
    /// What it is, in one phrase.
    pub what: &'static str,
    /// The paper's average retention (%) for the corresponding row, with where it comes from.
    pub paper: &'static str,
}

/// Every arm the report knows; a directory named otherwise is ignored with a warning.
pub const ARMS: &[Arm] = &[
    Arm { name: "none", what: "upper bound: every patch visible", paper: "100 (upper bound)" },
    Arm { name: "blank", what: "lower bound: a blank image", paper: "0 (lower bound, by definition)" },
    Arm { name: "avgpool", what: "patches average-pooled", paper: "64.1 (Table 1, Avg. Pool)" },
    Arm {
        name: "voco-causal",
        what: "continuous only, causal mask (VoCo-LLaMA)",
        paper: "81.0 (Table 1, VoCo-LLaMA)",
    },
    Arm { name: "voco", what: "continuous only, star mask", paper: "—" },
    Arm { name: "discrete", what: "discrete anchors only", paper: "33.3 (Table 4, discrete-only)" },
    Arm {
        name: "htc",
        what: "HTC: 4 anchors before the patches, star mask, β = 0, MLP-2 projectors",
        paper: "87.2 (Table 1)",
    },
    Arm { name: "nd1", what: "N_d = 1 anchor", paper: "83.9 (Table 4)" },
    Arm { name: "nd2", what: "N_d = 2 anchors", paper: "84.9 (Table 4)" },
    Arm { name: "nd8", what: "N_d = 8 anchors", paper: "84.6 (Table 4)" },
    Arm { name: "mask-causal", what: "causal mask instead of the star", paper: "—" },
    Arm { name: "mask-full", what: "full (bidirectional) mask", paper: "85.4 (Table 12)" },
    Arm { name: "fusion-after", what: "anchors after the patches", paper: "84.6 (Table 4, post-fusion)" },
    Arm { name: "fusion-mean", what: "anchors mean-fused into the patches", paper: "84.6 (Table 4)" },
    Arm {
        name: "htc-anchors-shuffled",
        what: "the htc model given another test image's anchors",
        paper: "— (control)",
    },
    Arm { name: "kl-0.01", what: "β = 0.01", paper: "86.8 (Table 9)" },
    Arm { name: "kl-0.1", what: "β = 0.1", paper: "87.2 (Table 9, the paper's default)" },
    Arm { name: "kl-1", what: "β = 1", paper: "86.5 (Table 9)" },
    Arm { name: "pd-linear", what: "linear P_d", paper: "85.4 (Table 10)" },
    Arm { name: "pd-3", what: "3-layer MLP P_d", paper: "87.3 (Table 10)" },
    Arm {
        name: "pv-linear",
        what: "linear P_v",
        paper: "the paper's own setting (Table 6), no separate number",
    },
];

/// The arm named `name`, if the report knows it.
pub fn arm(name: &str) -> Option<&'static Arm> {
    ARMS.iter().find(|a| a.name == name)
}

/// A table of arms compared with each other.
pub struct Group {
    /// A short name the page's code refers to (which figure goes with the table).
    pub key: &'static str,
    /// The section's title.
    pub title: &'static str,
    /// The group's arms, in table order.
    pub arms: &'static [&'static str],
    /// A sentence printed under the table (empty for none).
    pub note: &'static str,
}

/// The comparison groups, in page order. Groups 1–4 are the core (three or more seeds).
pub const GROUPS: &[Group] = &[
    Group {
        key: "modes",
        title: "Compression modes (paper Tables 1 and 4)",
        arms: &["none", "blank", "avgpool", "voco-causal", "voco", "discrete", "htc"],
        note: "",
    },
    Group {
        key: "nd",
        title: "Number of anchors N_d (paper Table 4)",
        arms: &["nd1", "nd2", "htc", "nd8"],
        note: "",
    },
    Group {
        key: "mask",
        title: "Mask topology (paper Table 12, bottom)",
        arms: &["htc", "mask-causal", "mask-full"],
        note: "`htc` uses the star mask.",
    },
    Group {
        key: "fusion",
        title: "Where the anchors join the patches (paper Table 4)",
        arms: &["htc", "fusion-after", "fusion-mean"],
        note: "`htc` puts the anchors before the patches.",
    },
    Group {
        key: "anchors",
        title: "Anchor control (no paper row)",
        arms: &["htc", SHUFFLED],
        note: "The same trained `htc` model, evaluated with the anchors of a different random test image.",
    },
    Group {
        key: "kl",
        title: "Regularisation weight β (paper Table 9)",
        arms: &["htc", "kl-0.01", "kl-0.1", "kl-1"],
        note: "`htc` uses β = 0; the paper has no β = 0 row (its default is β = 0.1).",
    },
    Group {
        key: "pd",
        title: "Discrete projector P_d (paper Table 10)",
        arms: &["pd-linear", "htc", "pd-3"],
        note: "`htc` uses a 2-layer MLP (MLP-2).",
    },
    Group {
        key: "pv",
        title: "Continuous projector P_v",
        arms: &["pv-linear", "htc"],
        note: "The paper's Table 6 uses a linear P_v; `htc` uses LLaVA's mlp2x_gelu.",
    },
];

/// Arms with fewer seeds than this are marked "(1 seed)", "(2 seeds)".
pub const FULL_SEEDS: usize = 3;

/// The anchor-count arms and their N_d, in increasing N_d (figure b).
pub const ND: &[(&str, usize)] = &[("nd1", 1), ("nd2", 2), ("htc", 4), ("nd8", 8)];

/// The β arms and their β as printed, in increasing β (figure e).
pub const KL: &[(&str, &str)] = &[("htc", "0"), ("kl-0.01", "0.01"), ("kl-0.1", "0.1"), ("kl-1", "1")];

/// The question families of each kind, in table order.
pub const FAMILIES: &[(&str, &str)] = &[
    ("exist", "S"),
    ("count", "S"),
    ("color", "S"),
    ("shape", "S"),
    ("size", "D"),
    ("texture", "D"),
    ("position", "D"),
];

/// The arms whose probes the page shows.
pub const PROBE_ARMS: &[&str] = &["htc", "voco"];
/// The arms whose attention the page shows.
pub const ATTENTION_ARMS: &[&str] = &["htc", "voco"];

/// Table 3: probing top-1 accuracy (%) per kind: (kind, z, v_d, V̄).
pub const PROBE_PAPER: &[(&str, f64, f64, f64)] = &[("S", 26.67, 20.83, 26.67), ("D", 30.70, 25.44, 27.19)];
