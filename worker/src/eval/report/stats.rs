//! The report's arithmetic: mean and sample standard deviation over seeds, the paper's
//! retention per seed, and the paired test behind every claim's verdict.

use std::collections::BTreeMap;

/// Values keyed by seed.
pub type PerSeed = BTreeMap<u64, f64>;

/// The mean of `xs`, `None` when empty.
pub fn mean(xs: &[f64]) -> Option<f64> {
    (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
}

/// The sample standard deviation of `xs` (divided by n − 1), `None` below two values.
pub fn sd(xs: &[f64]) -> Option<f64> {
    let m = mean(xs)?;
    (xs.len() >= 2).then(|| (xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (xs.len() - 1) as f64).sqrt())
}

/// Mean, sample std and count of some values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub mean: Option<f64>,
    pub sd: Option<f64>,
}

impl Summary {
    pub fn of(xs: &[f64]) -> Self {
        Self { n: xs.len(), mean: mean(xs), sd: sd(xs) }
    }

    pub fn of_seeds(m: &PerSeed) -> Self {
        Self::of(&m.values().copied().collect::<Vec<_>>())
    }

    /// `61.3 ± 1.2` (two or more values), `61.3` (one), `—` (none), with `decimals` digits.
    pub fn show(&self, decimals: usize) -> String {
        match (self.mean, self.sd) {
            (Some(m), Some(s)) => format!("{m:.decimals$} ± {s:.decimals$}"),
            (Some(m), None) => format!("{m:.decimals$}"),
            _ => "—".to_string(),
        }
    }
}

/// The paper's retention per seed: `(arm − lower) / (upper − lower) × 100`, each seed against
/// the same seed's bounds. Seeds lacking a bound, or whose bounds are equal (no range to
/// measure in), are left out.
pub fn retention(arm: &PerSeed, upper: &PerSeed, lower: &PerSeed) -> PerSeed {
    arm.iter()
        .filter_map(|(seed, a)| {
            let (u, l) = (upper.get(seed)?, lower.get(seed)?);
            (u != l).then(|| (*seed, (a - l) / (u - l) * 100.0))
        })
        .collect()
}

/// A paired comparison over the seeds both sides have: `d_s = a_s − b_s`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Paired {
    /// Seeds in common.
    pub n: usize,
    /// The mean difference d̄.
    pub mean: f64,
    /// Its standard error sd(d) / √n, with two or more seeds.
    pub se: Option<f64>,
}

impl Paired {
    /// `a` against `b` over their common seeds; `None` when they share none.
    pub fn of(a: &PerSeed, b: &PerSeed) -> Option<Self> {
        let d: Vec<f64> = a.iter().filter_map(|(s, x)| Some(x - b.get(s)?)).collect();
        let m = mean(&d)?;
        Some(Self { n: d.len(), mean: m, se: sd(&d).map(|s| s / (d.len() as f64).sqrt()) })
    }

    /// Whether |d̄| > 2·SE (`None` with one seed: not tested).
    pub fn significant(&self) -> Option<bool> {
        self.se.map(|se| self.mean.abs() > 2.0 * se)
    }

    /// `+3.0 ± 0.6 points (paired mean difference ± SE over n = 3 seeds)`, or the raw
    /// difference with one seed; `decimals` digits, `unit` after the numbers.
    pub fn show(&self, decimals: usize, unit: &str) -> String {
        match self.se {
            Some(se) => format!(
                "{:+.decimals$} ± {se:.decimals$}{unit} (paired mean difference ± SE over n = {} seeds)",
                self.mean, self.n
            ),
            None => format!("{:+.decimals$}{unit} (one seed)", self.mean),
        }
    }
}

/// What the paper says about `a − b`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// a > b.
    Greater,
    /// a ≥ b: a difference within noise agrees too.
    NotWorse,
}

/// A claim's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Agrees,
    Disagrees,
    WithinNoise,
    /// Fewer than two seeds in common.
    OneSeed,
    /// An arm the claim needs has no results.
    NotRun,
}

impl Verdict {
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Agrees => "agrees",
            Verdict::Disagrees => "disagrees",
            Verdict::WithinNoise => "within noise",
            Verdict::OneSeed => "one seed: not tested",
            Verdict::NotRun => "not run",
        }
    }
}

/// The verdict on the paper's `expect` about `a − b`: "agrees" / "disagrees" when |d̄| > 2·SE
/// in the paper's direction / the other; otherwise "within noise", which agrees with a
/// [`Expect::NotWorse`] claim.
pub fn verdict(p: Option<&Paired>, expect: Expect) -> Verdict {
    let Some(p) = p else { return Verdict::NotRun };
    match (p.significant(), expect) {
        (None, _) => Verdict::OneSeed,
        (Some(true), _) if p.mean > 0.0 => Verdict::Agrees,
        (Some(true), _) => Verdict::Disagrees,
        (Some(false), Expect::Greater) => Verdict::WithinNoise,
        (Some(false), Expect::NotWorse) => Verdict::Agrees,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeds(v: &[(u64, f64)]) -> PerSeed {
        v.iter().copied().collect()
    }

    #[test]
    fn mean_and_sample_std() {
        assert_eq!(mean(&[]), None);
        assert_eq!(mean(&[2.0, 3.0, 4.0]), Some(3.0));
        assert_eq!(sd(&[5.0]), None);
        // (1 + 0 + 1) / (3 − 1) = 1.
        assert_eq!(sd(&[2.0, 3.0, 4.0]), Some(1.0));
        // Deviations ±1 around 61: 2 / 1 = 2, sd √2.
        assert!((sd(&[60.0, 62.0]).unwrap() - 2f64.sqrt()).abs() < 1e-12);
        assert_eq!(Summary::of(&[60.0, 62.0]).show(1), "61.0 ± 1.4");
        assert_eq!(Summary::of(&[61.26]).show(1), "61.3");
        assert_eq!(Summary::of(&[]).show(1), "—");
    }

    #[test]
    fn paired_test_verdicts() {
        // d = [2, 3, 4]: mean 3, sd 1, SE 1/√3 = 0.577; 3 > 1.155 → agrees.
        let a = seeds(&[(0, 12.0), (1, 13.0), (2, 14.0)]);
        let b = seeds(&[(0, 10.0), (1, 10.0), (2, 10.0)]);
        let p = Paired::of(&a, &b).unwrap();
        assert_eq!((p.n, p.mean), (3, 3.0));
        assert!((p.se.unwrap() - 0.57735).abs() < 1e-5);
        assert_eq!(verdict(Some(&p), Expect::Greater), Verdict::Agrees);
        // The other way round it disagrees.
        assert_eq!(verdict(Paired::of(&b, &a).as_ref(), Expect::Greater), Verdict::Disagrees);

        // d = [1, −1, 3]: mean 1, sd 2, SE 1.155; 1 < 2.31 → within noise, which a
        // not-worse claim counts as agreeing.
        let c = seeds(&[(0, 11.0), (1, 9.0), (2, 13.0)]);
        let p = Paired::of(&c, &b).unwrap();
        assert_eq!(p.mean, 1.0);
        assert!((p.se.unwrap() - 2.0 / 3f64.sqrt()).abs() < 1e-12);
        assert_eq!(verdict(Some(&p), Expect::Greater), Verdict::WithinNoise);
        assert_eq!(verdict(Some(&p), Expect::NotWorse), Verdict::Agrees);
        // Significantly worse disagrees even with a not-worse claim.
        assert_eq!(verdict(Paired::of(&b, &a).as_ref(), Expect::NotWorse), Verdict::Disagrees);

        // Only seed 0 in common: the raw difference, not tested.
        let one = seeds(&[(0, 15.0), (7, 1.0)]);
        let p = Paired::of(&one, &b).unwrap();
        assert_eq!((p.n, p.mean, p.se), (1, 5.0, None));
        assert_eq!(verdict(Some(&p), Expect::Greater), Verdict::OneSeed);
        assert_eq!(p.show(1, " points"), "+5.0 points (one seed)");

        // No seed in common: not run.
        assert_eq!(Paired::of(&seeds(&[(9, 1.0)]), &b), None);
        assert_eq!(verdict(None, Expect::Greater), Verdict::NotRun);
    }

    #[test]
    fn retention_uses_each_seeds_own_bounds() {
        let upper = seeds(&[(0, 80.0), (1, 90.0), (2, 70.0)]);
        let lower = seeds(&[(0, 20.0), (1, 30.0)]);
        let arm = seeds(&[(0, 65.0), (1, 60.0), (2, 60.0)]);
        let r = retention(&arm, &upper, &lower);
        // Seed 0: 45 / 60 = 75 %; seed 1: 30 / 60 = 50 %; seed 2 has no lower bound.
        assert_eq!(r, seeds(&[(0, 75.0), (1, 50.0)]));
        assert_eq!(Summary::of_seeds(&r).show(1), "62.5 ± 17.7");
        // Equal bounds give no retention for that seed.
        assert!(retention(&arm, &seeds(&[(0, 20.0)]), &lower).is_empty());
    }
}
