//! The text of `docs/results.md`: setup, one table per group of arms, the claims with their
//! verdicts, probing, attention and cost. Every number comes from the results; percentages
//! have one decimal, milliseconds one, attention masses three; "± x" is the sample std.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::input::{Layer, MeanStd, Probe, Reprs, Results};
use super::paper::{self, Group};
use super::stats::{mean, verdict, Expect, Paired, PerSeed, Summary, Verdict};
use super::{per_layer, FIG_ATTENTION, FIG_HEATMAPS, FIG_KL, FIG_MODES, FIG_ND};

/// `writeln!` into a `String` (which cannot fail).
macro_rules! w {
    ($s:expr, $($arg:tt)*) => {{
        let _ = writeln!($s, $($arg)*);
    }};
}

/// Where the page finds the results directory and which figures were drawn there.
pub struct Links {
    /// The results directory relative to the page's directory, with `/` separators.
    pub dir: String,
    /// File names of the figures drawn.
    pub drawn: Vec<&'static str>,
}

impl Links {
    /// The relative link to figure `name`, `None` when it was not drawn.
    fn figure(&self, name: &str) -> Option<String> {
        self.drawn.contains(&name).then(|| format!("{}/{name}", self.dir))
    }
}

type Link<'a> = &'a Links;

/// The whole page.
pub fn render(r: &Results, link: Link) -> String {
    let mut s = String::new();
    intro(&mut s, link);
    setup(&mut s, r);
    for g in paper::GROUPS {
        group(&mut s, r, g, link);
    }
    claims(&mut s, r);
    probing(&mut s, r);
    attention(&mut s, r, link);
    cost(&mut s, r);
    if let Some(limits) = &r.limits {
        s.push('\n');
        s.push_str(limits);
        if !limits.ends_with('\n') {
            s.push('\n');
        }
    }
    s
}

fn intro(s: &mut String, link: Link) {
    w!(s, "# Results on ShapesVQA\n");
    w!(
        s,
        "What the HTC-VLM variants (\"arms\") reach on the ShapesVQA toy data, each trained with \
         several seeds, set beside the paper's numbers. This page is generated from the raw JSON \
         under [`{dir}/`]({dir}/) by `htc report`; no number in it is typed by hand. \
         `scripts/experiments.sh` reruns the experiments and the page; \
         `htc report --results docs/results --out docs/results.md` regenerates the page alone.\n",
        dir = link.dir
    );
    w!(
        s,
        "Accuracy is exact match on the test questions, in %, overall and per kind (S: semantic \
         families exist, count, color, shape; D: detail families size, texture, position). \
         Retention is the paper's measure, (arm − blank) / (none − blank) × 100, computed per seed \
         against the same seed's `none` and `blank`. Values are the mean ± sample std over seeds; \
         \"seeds\" is n.\n"
    );
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn setup(s: &mut String, r: &Results) {
    let st = &r.setup;
    w!(s, "## Setup\n");
    let seeds: Vec<String> = st.seeds.iter().map(u64::to_string).collect();
    w!(s, "- Seeds: {} ({} in all).", seeds.join(", "), st.seeds.len());
    if let Some(q) = st.quick {
        w!(s, "- Quick run: {}.", if q { "yes (shortened settings)" } else { "no" });
    }
    let mut training = Vec::new();
    if let Some(v) = st.steps {
        training.push(format!("{v} steps"));
    }
    if let Some(v) = st.batch {
        training.push(format!("batch {v}"));
    }
    if let Some(v) = st.lr {
        training.push(format!("learning rate {v}"));
    }
    if let Some(v) = st.train_images {
        training.push(format!("{v} training images"));
    }
    if !training.is_empty() {
        w!(s, "- Training: {}.", training.join(", "));
    }
    if let Some(v) = st.test_questions {
        w!(s, "- Test questions: {v}.");
    }
    if let Some(m) = &st.model {
        let mut parts = Vec::new();
        if let Some(v) = m.llm_width {
            parts.push(format!("LLM width {v}"));
        }
        if let Some(v) = m.llm_layers {
            parts.push(format!("{v} LLM layers"));
        }
        if let Some(v) = m.vision_width {
            parts.push(format!("vision width {v}"));
        }
        if let Some(v) = m.patches {
            parts.push(format!("{v} patches"));
        }
        if let Some(v) = m.params {
            parts.push(format!("{:.2} M parameters", v as f64 / 1e6));
        }
        if !parts.is_empty() {
            w!(s, "- Model: {}.", parts.join(", "));
        }
    }
    if let Some(shared) = st.shared_seconds.as_ref().filter(|m| !m.is_empty()) {
        let parts: Vec<String> = shared.iter().map(|(seed, t)| format!("seed {seed} {t:.0} s")).collect();
        w!(s, "- Stages every arm of a seed shares: {}.", parts.join(", "));
    }
    if let Some(t) = st.total_seconds {
        w!(s, "- Total time: {t:.0} s ({:.1} h).", t / 3600.0);
    }
    if let Some(d) = &st.date {
        w!(s, "- Date: {d}.");
    }
    if let Some(n) = st.notes.as_ref().filter(|n| !n.trim().is_empty()) {
        w!(s, "- Notes: {}", n.trim());
    }
    let run: Vec<String> = paper::ARMS
        .iter()
        .filter_map(|a| {
            let n = r.seeds(a.name);
            (n > 0).then(|| format!("`{}` ({n})", a.name))
        })
        .collect();
    match run.is_empty() {
        true => w!(s, "- Arms with results: none yet."),
        false => w!(s, "- Arms with results (seeds): {}.", run.join(", ")),
    }
}

/// The arm's name, marked when it has fewer seeds than the core groups.
fn arm_cell(r: &Results, arm: &str) -> String {
    let n = r.seeds(arm);
    match n > 0 && n < paper::FULL_SEEDS {
        true => format!("`{arm}` ({n} seed{})", plural(n)),
        false => format!("`{arm}`"),
    }
}

fn kind(k: &'static str) -> impl Fn(&super::Run) -> Option<f64> + Copy {
    move |r| r.eval.metrics.kind.get(k).copied()
}

fn family(f: &'static str) -> impl Fn(&super::Run) -> Option<f64> + Copy {
    move |r| r.eval.metrics.family.get(f).copied()
}

fn figure(s: &mut String, link: Link, name: &str, alt: &str) {
    if let Some(l) = link.figure(name) {
        w!(s, "\n![{alt}]({l})");
    }
}

fn group(s: &mut String, r: &Results, g: &Group, link: Link) {
    w!(s, "\n## {}\n", g.title);
    if g.arms.iter().all(|a| r.seeds(a) == 0) {
        w!(s, "Not run yet.");
        return;
    }
    w!(s, "| arm | what it is | seeds | overall, % | S, % | D, % | retention, % | paper retention, % |");
    w!(s, "|---|---|---|---|---|---|---|---|");
    for arm in g.arms {
        let (what, paper_ret) = paper::arm(arm).map_or(("", "—"), |a| (a.what, a.paper));
        let n = r.seeds(arm);
        if n == 0 {
            w!(s, "| `{arm}` | {what} | 0 | not run yet | — | — | — | {paper_ret} |");
            continue;
        }
        let overall = Summary::of_seeds(&r.overall(arm)).show(1);
        let sem = Summary::of_seeds(&r.metric(arm, kind("S"))).show(1);
        let det = Summary::of_seeds(&r.metric(arm, kind("D"))).show(1);
        let ret = r.retention(arm, |x| Some(x.eval.score));
        let mut ret_cell = Summary::of_seeds(&ret).show(1);
        if ret.len() != n {
            ret_cell += &format!(" (n = {})", ret.len());
        }
        w!(
            s,
            "| {} | {what} | {n} | {overall} | {sem} | {det} | {ret_cell} | {paper_ret} |",
            arm_cell(r, arm)
        );
    }
    if !g.note.is_empty() {
        w!(s, "\n{}", g.note);
    }
    match g.key {
        "modes" => {
            families(s, r, g);
            figure(s, link, FIG_MODES, "overall accuracy per mode, mean ± std over seeds, with the bounds");
        }
        "nd" => figure(s, link, FIG_ND, "overall accuracy against N_d, mean ± std over seeds"),
        "kl" => figure(s, link, FIG_KL, "overall accuracy against β, mean ± std over seeds"),
        _ => {}
    }
}

/// Accuracy and retention per question family (means over seeds).
fn families(s: &mut String, r: &Results, g: &Group) {
    let head: Vec<String> = paper::FAMILIES.iter().map(|(f, k)| format!("{f} ({k})")).collect();
    for (title, retention) in
        [("Accuracy per family, % (mean over seeds)", false), ("Retention per family, %", true)]
    {
        w!(s, "\n{title}:\n");
        w!(s, "| arm | {} |", head.join(" | "));
        w!(s, "|---|{}", "---|".repeat(head.len()));
        for arm in g.arms.iter().filter(|a| r.seeds(a) > 0) {
            let cells: Vec<String> = paper::FAMILIES
                .iter()
                .map(|(f, _)| {
                    let v = match retention {
                        true => r.retention(arm, family(f)),
                        false => r.metric(arm, family(f)),
                    };
                    let m = mean(&v.values().copied().collect::<Vec<_>>());
                    m.map_or("—".to_string(), |m| format!("{m:.1}"))
                })
                .collect();
            w!(s, "| `{arm}` | {} |", cells.join(" | "));
        }
    }
}

/// One comparison `a − b` on overall accuracy: its verdict and its sentence.
fn compare(r: &Results, a: &str, b: &str, expect: Expect) -> (Verdict, String) {
    let (ra, rb) = (r.overall(a), r.overall(b));
    let missing: Vec<String> = [(a, &ra), (b, &rb)]
        .iter()
        .filter(|(_, v)| v.is_empty())
        .map(|(name, _)| format!("`{name}`"))
        .collect();
    if !missing.is_empty() {
        return (Verdict::NotRun, format!("`{a}` vs `{b}`: {} not run", missing.join(" and ")));
    }
    match Paired::of(&ra, &rb) {
        None => (Verdict::NotRun, format!("`{a}` vs `{b}`: no seed in common")),
        Some(p) => (verdict(Some(&p), expect), format!("`{a}` − `{b}` = {}", p.show(1, " points"))),
    }
}

/// `sentence: **verdict**.`
fn judged((v, sentence): (Verdict, String)) -> String {
    format!("{sentence}: **{}**.", v.label())
}

fn claims(s: &mut String, r: &Results) {
    w!(s, "\n## Claims\n");
    w!(
        s,
        "Each claim is tested on overall accuracy, paired over seeds (every arm of a seed shares \
         that seed's data and shared stages): d_s = a_s − b_s, mean d̄, standard error \
         SE = sd(d) / √n. The verdict is \"agrees\" or \"disagrees\" when |d̄| > 2·SE in the \
         paper's direction or the other, else \"within noise\"; with fewer than two seeds in common \
         the raw difference is given, not tested.\n"
    );
    let bullet = |s: &mut String, title: &str, sentences: Vec<String>| {
        w!(s, "- **{title}** {}", sentences.join(" "));
    };
    bullet(
        s,
        "Hybrid keeps more than continuous-only (Table 1).",
        vec![
            judged(compare(r, "htc", "voco", Expect::Greater)),
            judged(compare(r, "htc", "voco-causal", Expect::Greater)),
        ],
    );
    bullet(
        s,
        "N_d = 4 is best (Table 4).",
        ["nd1", "nd2", "nd8"].iter().map(|b| judged(compare(r, "htc", b, Expect::Greater))).collect(),
    );
    bullet(
        s,
        "The star mask beats causal and full masks (Table 12).",
        ["mask-causal", "mask-full"].iter().map(|b| judged(compare(r, "htc", b, Expect::Greater))).collect(),
    );
    bullet(
        s,
        "Anchors before the patches beat after and mean fusion (Table 4).",
        ["fusion-after", "fusion-mean"]
            .iter()
            .map(|b| judged(compare(r, "htc", b, Expect::Greater)))
            .collect(),
    );
    bullet(
        s,
        "Control, not a paper claim: the anchors carry this image's information.",
        vec![judged(compare(r, "htc", paper::SHUFFLED, Expect::Greater))],
    );
    bullet(s, "β barely matters (Table 9).", kl_claim(r));
    bullet(
        s,
        "A linear P_d already works (Table 10): `pd-linear` within noise of `htc` or better agrees.",
        vec![judged(compare(r, "pd-linear", "htc", Expect::NotWorse))],
    );
    bullet(s, "The compressed token z carries both S and D (Table 3).", probe_claim(r));
    bullet(s, "`<voco>` attends more to anchors than to patches, per token (Figure 3).", attention_claim(r));
}

/// Claim 6: every kl arm within noise of `htc` agrees; any beyond 2·SE disagrees.
fn kl_claim(r: &Results) -> Vec<String> {
    let mut sentences = Vec::new();
    let (mut tested, mut beyond, mut untested) = (0, 0, 0);
    for (arm, _) in paper::KL.iter().filter(|(a, _)| *a != paper::DEFAULT) {
        let (v, sentence) = compare(r, paper::DEFAULT, arm, Expect::Greater);
        let note = match v {
            Verdict::NotRun => "",
            Verdict::OneSeed => {
                untested += 1;
                ""
            }
            Verdict::WithinNoise => {
                tested += 1;
                " (within 2·SE)"
            }
            _ => {
                tested += 1;
                beyond += 1;
                " (beyond 2·SE)"
            }
        };
        sentences.push(format!("{sentence}{note};"));
    }
    let v = if beyond > 0 {
        Verdict::Disagrees
    } else if untested > 0 {
        Verdict::OneSeed
    } else if tested > 0 {
        Verdict::Agrees
    } else {
        Verdict::NotRun
    };
    sentences.push(format!("every difference within 2·SE agrees: **{}**.", v.label()));
    sentences
}

/// A probe's mean accuracy per representation on `kind`: the file's `mean`, or the mean of
/// its tasks of that kind.
fn probe_kind(p: &Probe, kind: &str) -> Reprs {
    if let Some(m) = p.mean.as_ref().and_then(|m| m.get(kind)) {
        return *m;
    }
    let tasks: Vec<&Reprs> = p.tasks.iter().filter(|t| t.kind == kind).map(|t| &t.accuracy).collect();
    let avg = |f: fn(&Reprs) -> Option<f64>| mean(&tasks.iter().filter_map(|t| f(t)).collect::<Vec<_>>());
    Reprs { z: avg(|t| t.z), v_d: avg(|t| t.v_d), v: avg(|t| t.v) }
}

/// Claim 8: per kind, z ≥ the better of v_d and V̄ (htc's probes).
fn probe_claim(r: &Results) -> Vec<String> {
    let Some(files) = r.probes.get(paper::DEFAULT) else {
        return vec![format!("`{}` probes: **not run**.", paper::DEFAULT)];
    };
    let mut out = Vec::new();
    for (k, pz, pd, pv) in paper::PROBE_PAPER {
        let (mut z, mut best) = (PerSeed::new(), PerSeed::new());
        for (seed, p) in files {
            let m = probe_kind(p, k);
            let other = [m.v_d, m.v].into_iter().flatten().fold(f64::NEG_INFINITY, f64::max);
            if let (Some(zv), true) = (m.z, other.is_finite()) {
                z.insert(*seed, zv);
                best.insert(*seed, other);
            }
        }
        let p = Paired::of(&z, &best);
        let said = match &p {
            Some(p) => format!("On {k}, z − max(v_d, V̄) = {}", p.show(1, " points")),
            None => format!("On {k}, no probe has z and v_d or V̄"),
        };
        out.push(format!(
            "{said} (Table 3: z {pz:.2}, v_d {pd:.2}, V̄ {pv:.2}; z ≥ the better, so within noise agrees): **{}**.",
            verdict(p.as_ref(), Expect::NotWorse).label()
        ));
    }
    out
}

/// Claim 9: htc's `<voco>` gives each anchor more attention than each patch (means over layers).
fn attention_claim(r: &Results) -> Vec<String> {
    let Some(files) = r.attention.get(paper::DEFAULT) else {
        return vec![format!("`{}` attention: **not run**.", paper::DEFAULT)];
    };
    let (mut anchor, mut patch) = (PerSeed::new(), PerSeed::new());
    for (seed, a) in files {
        let avg = |f: fn(&Layer) -> Option<MeanStd>| {
            mean(&a.layers.iter().filter_map(|l| f(l).map(|v| v.mean)).collect::<Vec<_>>())
        };
        if let (Some(x), Some(y)) = (avg(|l| l.anchor_token), avg(|l| l.patch_token)) {
            anchor.insert(*seed, x);
            patch.insert(*seed, y);
        }
    }
    let p = Paired::of(&anchor, &patch);
    let said = match &p {
        Some(p) => format!(
            "In `{}`, attention per anchor − per patch (mean over layers) = {}",
            paper::DEFAULT,
            p.show(3, "")
        ),
        None => "No attention file has per-token masses".to_string(),
    };
    vec![format!("{said}: **{}**.", verdict(p.as_ref(), Expect::Greater).label())]
}

/// Mean ± std over seeds of some optional per-seed values, with `decimals` digits.
fn over_seeds(vals: impl Iterator<Item = Option<f64>>, decimals: usize) -> String {
    Summary::of(&vals.flatten().collect::<Vec<_>>()).show(decimals)
}

fn probing(s: &mut String, r: &Results) {
    w!(s, "\n## Probing\n");
    let arms: Vec<&str> = paper::PROBE_ARMS.iter().copied().filter(|a| r.probes.contains_key(*a)).collect();
    if arms.is_empty() {
        w!(s, "Not run yet.");
        return;
    }
    let first = arms.iter().find_map(|a| r.probes.get(*a)?.values().next());
    let scenes = first.map(|p| (p.train_scenes, p.test_scenes));
    w!(
        s,
        "Linear probes of a scene's labels from three representations, top-1 accuracy, %: z, the \
         `<voco>` output; v_d, the anchors pooled; V̄, the patches pooled (the paper's Table 3).{}",
        match scenes {
            Some((Some(tr), Some(te))) => format!(" Trained on {tr} scenes, tested on {te}."),
            _ => String::new(),
        }
    );
    for arm in &arms {
        let files = &r.probes[*arm];
        w!(s, "\n`{arm}`, {} seed{}:\n", files.len(), plural(files.len()));
        w!(s, "| task | kind | classes | majority, % | z, % | v_d, % | V̄, % |");
        w!(s, "|---|---|---|---|---|---|---|");
        // Tasks in the order the first file lists them, then any others.
        let mut tasks: Vec<(&str, &str, Option<u64>)> = Vec::new();
        for p in files.values() {
            for t in &p.tasks {
                if !tasks.iter().any(|(name, _, _)| *name == t.task) {
                    tasks.push((&t.task, &t.kind, t.classes));
                }
            }
        }
        for (task, k, classes) in tasks {
            let of = |f: fn(&super::input::ProbeTask) -> Option<f64>| {
                over_seeds(files.values().map(|p| p.tasks.iter().find(|t| t.task == task).and_then(f)), 1)
            };
            w!(
                s,
                "| {task} | {k} | {} | {} | {} | {} | {} |",
                classes.map_or("—".to_string(), |c| c.to_string()),
                of(|t| t.majority),
                of(|t| t.accuracy.z),
                of(|t| t.accuracy.v_d),
                of(|t| t.accuracy.v)
            );
        }
    }
    w!(s, "\nPer kind, beside the paper's Table 3:\n");
    w!(s, "| kind | source | z, % | v_d, % | V̄, % |");
    w!(s, "|---|---|---|---|---|");
    for (k, pz, pd, pv) in paper::PROBE_PAPER {
        for arm in &arms {
            let files = &r.probes[*arm];
            let of =
                |f: fn(&Reprs) -> Option<f64>| over_seeds(files.values().map(|p| f(&probe_kind(p, k))), 1);
            w!(s, "| {k} | `{arm}` | {} | {} | {} |", of(|m| m.z), of(|m| m.v_d), of(|m| m.v));
        }
        w!(s, "| {k} | paper, Table 3 | {pz:.2} | {pd:.2} | {pv:.2} |");
    }
}

fn attention(s: &mut String, r: &Results, link: Link) {
    w!(s, "\n## Attention of `<voco>`\n");
    let arms: Vec<&str> =
        paper::ATTENTION_ARMS.iter().copied().filter(|a| r.attention.contains_key(*a)).collect();
    if arms.is_empty() {
        w!(s, "Not run yet.");
        return;
    }
    w!(
        s,
        "The attention mass `<voco>` puts on the anchors and on the patches, summed over each and \
         per token (sum ÷ count), per layer: mean over seeds ± std over seeds (with one seed, ± std \
         over the images). The paper's Figure 3 shows `<voco>` attending to the anchors."
    );
    type Get = fn(&Layer) -> Option<MeanStd>;
    let getters: [Get; 4] = [|l| l.anchors, |l| l.patches, |l| l.anchor_token, |l| l.patch_token];
    for arm in arms {
        let files = &r.attention[arm];
        let images = files.values().next().and_then(|a| a.images);
        w!(
            s,
            "\n`{arm}`, {} seed{}{}:\n",
            files.len(),
            plural(files.len()),
            images.map_or(String::new(), |n| format!(", {n} images each"))
        );
        w!(s, "| layer | anchors, sum | patches, sum | per anchor | per patch |");
        w!(s, "|---|---|---|---|---|");
        let mut rows: BTreeMap<usize, [String; 4]> = BTreeMap::new();
        for (col, get) in getters.iter().enumerate() {
            for (layer, m, err) in per_layer(r, arm, get) {
                let cell = match err {
                    Some(e) => format!("{m:.3} ± {e:.3}"),
                    None => format!("{m:.3}"),
                };
                rows.entry(layer).or_insert_with(|| std::array::from_fn(|_| "—".to_string()))[col] = cell;
            }
        }
        for (layer, cells) in rows {
            w!(s, "| {layer} | {} |", cells.join(" | "));
        }
    }
    figure(s, link, FIG_ATTENTION, "attention per token to anchors and to patches, by layer");
    figure(s, link, FIG_HEATMAPS, "attention of voco in htc over the anchors and the patch grid");
}

fn cost(s: &mut String, r: &Results) {
    w!(s, "\n## Cost per question\n");
    if r.cost.is_empty() {
        w!(s, "Not run yet.");
        return;
    }
    let first = r.cost.values().next();
    let how = match first.map(|c| (c.repeats, c.threads)) {
        Some((Some(n), Some(t))) => format!(" Medians of {n} repeats on {t} threads."),
        Some((Some(n), None)) => format!(" Medians of {n} repeats."),
        _ => " Medians.".to_string(),
    };
    w!(
        s,
        "The time to answer one question three ways: the whole sequence prefilled (full); the image \
         compressed once (compress); a follow-up question on the cached compressed image \
         (follow-up).{how} The paper's cost tables (Tables 7 and 11) are marked placeholders by \
         its own authors, so no paper numbers are printed here.\n"
    );
    w!(s, "| arm | mode | prefix tokens | question tokens | kept positions | full, ms | compress, ms | follow-up, ms | full ÷ follow-up |");
    w!(s, "|---|---|---|---|---|---|---|---|---|");
    let opt = |v: Option<u64>| v.map_or("—".to_string(), |v| v.to_string());
    for a in paper::ARMS {
        let Some(c) = r.cost.get(a.name) else { continue };
        let ratio = match c.followup_ms.median > 0.0 {
            true => format!("{:.1}×", c.full_ms.median / c.followup_ms.median),
            false => "—".to_string(),
        };
        w!(
            s,
            "| `{}` | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {ratio} |",
            a.name,
            c.mode.as_deref().unwrap_or("—"),
            opt(c.prefix_tokens),
            opt(c.question_tokens),
            opt(c.kept_positions),
            c.full_ms.median,
            c.compress_ms.median,
            c.followup_ms.median
        );
    }
}
