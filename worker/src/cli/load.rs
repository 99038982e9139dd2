//! `htc load`: a load run against a running service (see `loadtest`): prints the report, and
//! fails when answers were lost or mixed up.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::eval::read_items;
use crate::loadtest::{plan, reference, run as run_load, summarise, with_page_codes, LoadConfig, PageCodes};
use htc_shared::protocol::CodesShape;

#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// The service: a worker or a load balancer in front of several (`ws://host:port`).
    #[arg(long)]
    pub url: String,
    /// Questions to ask: LLaVA conversation JSON (the first human turn of each record), as
    /// `htc data shapes` writes.
    #[arg(long)]
    pub data: PathBuf,
    /// Folder the data's image paths are relative to.
    #[arg(long)]
    pub images: PathBuf,
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Questions per client.
    #[arg(long, default_value_t = 100)]
    pub questions: usize,
    /// Questions about one image before a client moves to the next (the rest are follow-ups).
    #[arg(long, default_value_t = 4)]
    pub per_image: usize,
    /// Clients that visit each image, on average.
    #[arg(long, default_value_t = 2)]
    pub revisits: usize,
    #[arg(long, default_value_t = 8)]
    pub max_new_tokens: usize,
    /// Attempts per question (with backoff) before it counts as lost.
    #[arg(long, default_value_t = 20)]
    pub attempts: usize,
    /// Seconds to wait for one server message before retrying.
    #[arg(long, default_value_t = 30.0)]
    pub timeout: f64,
    /// After the run, ask every distinct question of the plan here (one worker, directly) and
    /// count an answer that differs from its answer as mixed up; without it, the answers to one
    /// question about one image must agree with each other.
    #[arg(long)]
    pub reference_url: Option<String>,
    /// Bearer token for the service.
    /// Send this fraction of the images with MGVQ codes computed here, as pages that run the
    /// encoder send them (0: the worker encodes every image).
    #[arg(long, default_value_t = 0.0)]
    pub page_codes: f64,
    /// The HTC checkpoint the service serves, whose MGVQ encoder computes those codes.
    #[arg(long)]
    pub encoder_model: Option<PathBuf>,
    #[arg(long, env = "HTC_TOKEN")]
    pub token: Option<String>,
    /// Also write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Codes as the page computes them: the MGVQ encoder of the HTC checkpoint in `dir` (the model
/// the service serves) on each image.
fn page_encoder(dir: &std::path::Path) -> Result<impl FnMut(&[u8]) -> Result<PageCodes>> {
    use crate::backend::Backend;
    use crate::formats::checkpoint::{AnyModel, Snapshot};
    let snap = Snapshot::<Backend>::open(dir, &crate::backend::device())?;
    let AnyModel::Htc { model, .. } = snap.model else {
        bail!("{} is not an HTC model: it has no MGVQ encoder to compute codes with", dir.display());
    };
    let Some(mgvq) = model.mgvq else { bail!("{} has no MGVQ encoder", dir.display()) };
    Ok(move |bytes: &[u8]| -> Result<PageCodes> {
        let img = htc_shared::preprocess::decode_image(bytes, Default::default())?;
        let rows = mgvq.codes_of(&img)?;
        let shape = CodesShape { positions: rows.len(), groups: rows.first().map_or(0, Vec::len) };
        Ok(PageCodes { codes: rows.concat(), shape })
    })
}

pub fn run(a: LoadArgs) -> Result<()> {
    if !(a.timeout.is_finite() && a.timeout > 0.0) {
        bail!("--timeout must be a positive number of seconds, got {}", a.timeout);
    }
    let cfg = LoadConfig {
        url: a.url.clone(),
        token: a.token.clone(),
        clients: a.clients,
        questions: a.questions,
        per_image: a.per_image,
        revisits: a.revisits,
        max_new_tokens: a.max_new_tokens,
        attempts: a.attempts,
        timeout: Duration::from_secs_f64(a.timeout),
    };
    let items = read_items(&a.data, &a.images)?;
    let mut plan = plan(&items, &cfg)?;
    if a.page_codes > 0.0 {
        let Some(dir) = &a.encoder_model else {
            bail!("--page-codes needs --encoder-model, the served HTC checkpoint, to compute the codes with");
        };
        let n = with_page_codes(&mut plan, a.page_codes, page_encoder(dir)?)?;
        eprintln!("{n} images go with MGVQ codes computed here, as a page computes them");
    }
    let rt = tokio::runtime::Runtime::new()?;
    eprintln!("running: {} clients × {} questions against {}", cfg.clients, cfg.questions, cfg.url);
    let done = rt.block_on(run_load(&cfg, plan.clone()));
    let expected = match &a.reference_url {
        Some(url) => {
            let t = std::time::Instant::now();
            let e = rt.block_on(reference(&cfg, url, &plan))?;
            eprintln!("reference: {} answers from {url} in {:.1} s", e.len(), t.elapsed().as_secs_f64());
            Some(e)
        }
        None => None,
    };
    let r = summarise(&cfg, &done, expected.as_ref());
    outln!(
        "{} clients, {} questions: {} answered, {} lost, {} mixed up, {} retried\n\
         latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {:.1} answers/s over {:.1} s; cache hit rate {:.1}%",
        r.clients,
        r.questions,
        r.answered,
        r.lost,
        r.mixed_up,
        r.retried,
        r.p50_ms,
        r.p99_ms,
        r.max_ms,
        r.answers_per_s,
        r.wall_s,
        r.cache_hit_rate * 100.0
    );
    for (what, ms, n) in [
        ("with the page's codes", r.compress_ms_page_codes, r.compressions_page_codes),
        ("worker-encoded", r.compress_ms_worker_encoded, r.compressions_worker_encoded),
    ] {
        if let Some(ms) = ms {
            outln!("  compressing a new image, {what}: {ms:.1} ms on average ({n} images)");
        }
    }
    let mut errors: Vec<_> = r.errors.iter().collect();
    errors.sort();
    for (what, n) in errors {
        outln!("  failed attempts, {what}: {n} (retried)");
    }
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&r)?)
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    if r.lost > 0 || r.mixed_up > 0 {
        bail!("{} answers lost and {} mixed up", r.lost, r.mixed_up);
    }
    Ok(())
}
