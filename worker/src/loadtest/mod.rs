//! A WebSocket load client for a running service (one worker, or several behind a load
//! balancer): many concurrent clients, each asking questions about a series of images, with
//! follow-ups on each image and images shared between clients; it retries what fails cleanly,
//! checks every answer against the expected one, and reports what was lost or mixed up,
//! latency, throughput and the compressed-image cache hit rate. Client side only: it uses
//! the shared protocol and the evaluation's question reader, nothing of the engine.
//!
//! Each image is one connection, to `URL/ws?session=<image digest>`: a balancer that hashes on
//! that parameter sends every question about one image, from any client, to the worker that
//! holds its compressed image.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use htc_shared::protocol::{
    encode_binary, sha256_hex, BinaryKind, ClientMessage, CodesShape, ErrorCode, ServerMessage,
};

use crate::eval::Item;

/// What a load run does.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// The service's base URL (`ws://host:port`); `/ws` is added.
    pub url: String,
    /// A bearer token, when the service asks for one.
    pub token: Option<String>,
    pub clients: usize,
    /// Questions per client.
    pub questions: usize,
    /// Questions asked about one image before the client moves to the next.
    pub per_image: usize,
    /// How many clients visit each image, on average (the image pool is sized for it).
    pub revisits: usize,
    pub max_new_tokens: usize,
    /// Attempts per question before it counts as lost.
    pub attempts: usize,
    /// Give up waiting for one server message after this long (then retry).
    pub timeout: Duration,
}

/// One image and the questions asked about it, with the MGVQ codes a page would send along
/// (when the run sends some: see [`with_page_codes`]).
#[derive(Debug, Clone)]
pub struct Visit {
    pub image: Arc<Vec<u8>>,
    pub session: String,
    pub questions: Vec<String>,
    pub codes: Option<Arc<PageCodes>>,
}

/// An image's MGVQ codes, `positions × groups`, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct PageCodes {
    pub codes: Vec<u16>,
    pub shape: CodesShape,
}

/// Gives a `fraction` of the plan's images (every image alike wherever it is visited, spread
/// evenly over the images in plan order) the codes `encode` computes for them, as pages that
/// run the encoder would send them. Returns how many images got codes.
pub fn with_page_codes(
    plan: &mut [Vec<Visit>], fraction: f64, mut encode: impl FnMut(&[u8]) -> Result<PageCodes>,
) -> Result<usize> {
    if !(0.0..=1.0).contains(&fraction) {
        bail!("the fraction of images sent with codes must be in [0, 1], got {fraction}");
    }
    let mut order: Vec<String> = Vec::new();
    for v in plan.iter().flatten() {
        if !order.contains(&v.session) {
            order.push(v.session.clone());
        }
    }
    let chosen = |i: usize| ((i + 1) as f64 * fraction).floor() > (i as f64 * fraction).floor();
    let mut codes: HashMap<String, Arc<PageCodes>> = HashMap::new();
    for visit in plan.iter_mut().flatten() {
        let Some(i) = order.iter().position(|s| *s == visit.session) else { continue };
        if !chosen(i) {
            continue;
        }
        if !codes.contains_key(&visit.session) {
            codes.insert(visit.session.clone(), Arc::new(encode(&visit.image)?));
        }
        visit.codes = codes.get(&visit.session).cloned();
    }
    Ok(codes.len())
}

/// The plan: per client, the images it visits in order. Images are taken from `items` (grouped
/// by image, in order); the pool holds `clients × questions / per_image / revisits` images, so
/// each is visited by about `revisits` clients; its questions are its items', cycled.
pub fn plan(items: &[Item], cfg: &LoadConfig) -> Result<Vec<Vec<Visit>>> {
    if cfg.clients == 0 || cfg.questions == 0 || cfg.per_image == 0 || cfg.revisits == 0 || cfg.attempts == 0
    {
        bail!("--clients, --questions, --per-image, --revisits and --attempts must be at least 1");
    }
    let mut by_image: Vec<(PathBuf, Vec<String>)> = Vec::new();
    for it in items {
        match by_image.iter_mut().find(|(p, _)| *p == it.image) {
            Some((_, qs)) => qs.push(it.question.clone()),
            None => by_image.push((it.image.clone(), vec![it.question.clone()])),
        }
    }
    let visits_per_client = cfg.questions.div_ceil(cfg.per_image);
    let pool = (cfg.clients * visits_per_client).div_ceil(cfg.revisits).clamp(1, by_image.len().max(1));
    if by_image.is_empty() {
        bail!("the data has no questions");
    }
    let mut images = Vec::with_capacity(pool);
    for (path, qs) in by_image.into_iter().take(pool) {
        let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let session = sha256_hex(&bytes)[..16].to_string();
        images.push(Visit { image: Arc::new(bytes), session, questions: qs, codes: None });
    }
    Ok((0..cfg.clients)
        .map(|c| {
            let mut left = cfg.questions;
            (0..visits_per_client)
                .map(|k| {
                    let src = &images[(c + k * cfg.clients) % images.len()];
                    let n = left.min(cfg.per_image);
                    left -= n;
                    let questions =
                        (0..n).map(|i| src.questions[(i + c) % src.questions.len()].clone()).collect();
                    Visit { questions, ..src.clone() }
                })
                .collect()
        })
        .collect())
}

/// One question's outcome.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub session: String,
    pub question: String,
    /// `None`: lost (every attempt failed).
    pub answer: Option<String>,
    pub cached: bool,
    pub latency: Duration,
    pub attempts: usize,
    /// Frames about another request arrived while this one was answered.
    pub crossed: bool,
    /// The image went with the page's codes.
    pub page_codes: bool,
    /// The worker's time to compress the image, for an answer that did not find it cached.
    pub compress_ms: Option<f64>,
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Why an attempt failed. Connection failures, `busy` and internal errors are retried; a
/// question the worker refuses for what it is (a bad request) is not.
#[derive(Debug)]
enum Failure {
    /// The connection failed, closed, or went quiet: reconnect.
    Connection(String),
    /// The worker answered with an error: `busy` waits and retries on the same connection.
    Refused(ErrorCode, String),
}

async fn next(ws: &mut Ws, timeout: Duration) -> Result<ServerMessage, Failure> {
    loop {
        let m = tokio::time::timeout(timeout, ws.next())
            .await
            .map_err(|_| Failure::Connection("no answer in time".into()))?
            .ok_or_else(|| Failure::Connection("closed".into()))?
            .map_err(|e| Failure::Connection(e.to_string()))?;
        match m {
            Message::Text(t) => {
                return serde_json::from_str(t.as_str())
                    .map_err(|e| Failure::Connection(format!("bad frame: {e}")))
            }
            Message::Close(_) => return Err(Failure::Connection("closed by the server".into())),
            _ => {}
        }
    }
}

async fn send(ws: &mut Ws, m: &ClientMessage) -> Result<(), Failure> {
    let text = serde_json::to_string(m).expect("client messages serialise");
    ws.send(Message::Text(text.into())).await.map_err(|e| Failure::Connection(e.to_string()))
}

/// Connects for `visit` and uploads its image.
async fn open(cfg: &LoadConfig, visit: &Visit) -> Result<Ws, Failure> {
    let url = format!("{}/ws?session={}", cfg.url.trim_end_matches('/'), visit.session);
    let mut req = url.into_client_request().map_err(|e| Failure::Connection(e.to_string()))?;
    if let Some(t) = &cfg.token {
        let v = format!("Bearer {t}").parse().map_err(|_| Failure::Connection("bad token".into()))?;
        req.headers_mut().insert("authorization", v);
    }
    let (mut ws, _) = tokio::time::timeout(cfg.timeout, tokio_tungstenite::connect_async(req))
        .await
        .map_err(|_| Failure::Connection("connect timed out".into()))?
        .map_err(|e| Failure::Connection(e.to_string()))?;
    send(&mut ws, &ClientMessage::Hello { version: 1, capabilities: Vec::new() }).await?;
    match next(&mut ws, cfg.timeout).await? {
        ServerMessage::Ready { .. } => {}
        ServerMessage::Error { code, message, .. } => return Err(Failure::Refused(code, message)),
        other => return Err(Failure::Connection(format!("expected ready, got {other:?}"))),
    }
    let img = ClientMessage::Image {
        request_id: 0,
        image_id: "img".into(),
        byte_len: visit.image.len(),
        codes: visit.codes.as_ref().map(|c| c.shape),
        mask_layout: None,
    };
    send(&mut ws, &img).await?;
    ws.send(Message::Binary(encode_binary(BinaryKind::ImageBytes, 0, &visit.image).into()))
        .await
        .map_err(|e| Failure::Connection(e.to_string()))?;
    if let Some(c) = &visit.codes {
        let payload: Vec<u8> = c.codes.iter().flat_map(|c| c.to_le_bytes()).collect();
        ws.send(Message::Binary(encode_binary(BinaryKind::Codes, 0, &payload).into()))
            .await
            .map_err(|e| Failure::Connection(e.to_string()))?;
    }
    Ok(ws)
}

/// One answer: its text, whether the image came from the cache (and if not, the worker's time
/// to compress it), and whether frames of another request came in between.
struct Answered {
    text: String,
    cached: bool,
    compress_ms: f64,
    crossed: bool,
}

/// Asks one question on `ws`.
async fn ask(ws: &mut Ws, cfg: &LoadConfig, rid: u32, question: &str) -> Result<Answered, Failure> {
    let m = ClientMessage::Ask {
        request_id: rid,
        image_id: "img".into(),
        question: Some(question.to_string()),
        prompt_ids: None,
        max_new_tokens: cfg.max_new_tokens,
        temperature: 0.0,
        top_p: 1.0,
        seed: 0,
        mode: None,
    };
    send(ws, &m).await?;
    let (mut text, mut crossed) = (String::new(), false);
    loop {
        match next(ws, cfg.timeout).await? {
            ServerMessage::Token { request_id, text: t, .. } if request_id == rid => text.push_str(&t),
            ServerMessage::Done { request_id, cached, timings, .. } if request_id == rid => {
                return Ok(Answered { text, cached, compress_ms: timings.compress_ms, crossed })
            }
            ServerMessage::Error { request_id, code, message }
                if request_id.is_none_or(|r| r == rid || r == 0) =>
            {
                return Err(Failure::Refused(code, message))
            }
            ServerMessage::Token { .. } | ServerMessage::Done { .. } | ServerMessage::Error { .. } => {
                crossed = true
            }
            _ => {}
        }
    }
}

/// Backoff before attempt `n` (1-based): 50 ms doubling, at most 2 s.
fn backoff(n: usize) -> Duration {
    Duration::from_millis((50u64 << n.min(6)).min(2000))
}

/// One client: its visits in turn; every question is tried up to `attempts` times.
async fn client(
    cfg: Arc<LoadConfig>, visits: Vec<Visit>, errors: Arc<std::sync::Mutex<HashMap<String, usize>>>,
) -> Vec<Outcome> {
    let mut out = Vec::new();
    let note = |what: String| *errors.lock().expect("error counts").entry(what).or_default() += 1;
    for visit in visits {
        let mut ws: Option<Ws> = None;
        for (i, q) in visit.questions.iter().enumerate() {
            let t = Instant::now();
            let mut attempts = 0;
            let mut result = None;
            while attempts < cfg.attempts {
                attempts += 1;
                if attempts > 1 {
                    tokio::time::sleep(backoff(attempts - 1)).await;
                }
                if ws.is_none() {
                    match open(&cfg, &visit).await {
                        Ok(w) => ws = Some(w),
                        Err(f) => {
                            note(describe(&f));
                            continue;
                        }
                    }
                }
                let w = ws.as_mut().expect("connected");
                match ask(w, &cfg, i as u32 + 1, q).await {
                    Ok(r) => {
                        result = Some(r);
                        break;
                    }
                    Err(f @ Failure::Refused(ErrorCode::Busy, _)) => note(describe(&f)),
                    Err(Failure::Refused(code, message))
                        if !matches!(code, ErrorCode::Internal | ErrorCode::NotReady) =>
                    {
                        // The question itself is refused: asking again cannot help.
                        note(format!("refused: {code:?}: {message}"));
                        break;
                    }
                    Err(f) => {
                        // Anything else: a fresh connection (the image is uploaded again).
                        note(describe(&f));
                        ws = None;
                    }
                }
            }
            let (answer, cached, crossed, compress_ms) = match result {
                Some(a) => (Some(a.text), a.cached, a.crossed, (!a.cached).then_some(a.compress_ms)),
                None => (None, false, false, None),
            };
            out.push(Outcome {
                session: visit.session.clone(),
                question: q.clone(),
                answer,
                cached,
                latency: t.elapsed(),
                attempts,
                crossed,
                page_codes: visit.codes.is_some(),
                compress_ms,
            });
        }
        if let Some(mut w) = ws {
            let _ = w.close(None).await;
        }
    }
    out
}

fn describe(f: &Failure) -> String {
    match f {
        Failure::Connection(m) => {
            // Group by kind, not by the exact words (ports, addresses).
            let m = m.split(':').next().unwrap_or(m);
            format!("connection: {m}")
        }
        Failure::Refused(code, _) => format!("refused: {code:?}"),
    }
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub clients: usize,
    pub questions: usize,
    pub answered: usize,
    /// Questions no attempt answered.
    pub lost: usize,
    /// Answers that differ from the expected answer to that question about that image (or
    /// that came with frames of another request).
    pub mixed_up: usize,
    /// Questions that needed more than one attempt.
    pub retried: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub wall_s: f64,
    pub answers_per_s: f64,
    /// Answers whose image came from the worker's compressed-image cache.
    pub cache_hit_rate: f64,
    /// Failed attempts by kind (all retried).
    pub errors: HashMap<String, usize>,
    /// The worker's mean time to compress a new image sent with the page's MGVQ codes, and the
    /// number of such compressions (answers that did not find the image cached).
    pub compress_ms_page_codes: Option<f64>,
    pub compressions_page_codes: usize,
    /// The same for images the worker encoded itself.
    pub compress_ms_worker_encoded: Option<f64>,
    pub compressions_worker_encoded: usize,
}

/// What the clients saw.
#[derive(Debug, Clone, Default)]
pub struct Run {
    pub outcomes: Vec<Outcome>,
    pub wall_s: f64,
    /// Failed attempts by kind.
    pub errors: HashMap<String, usize>,
}

/// Runs every client to the end.
pub async fn run(cfg: &LoadConfig, plan: Vec<Vec<Visit>>) -> Run {
    let cfg = Arc::new(cfg.clone());
    let errors = Arc::new(std::sync::Mutex::new(HashMap::new()));
    let t0 = Instant::now();
    let tasks: Vec<_> =
        plan.into_iter().map(|visits| tokio::spawn(client(cfg.clone(), visits, errors.clone()))).collect();
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.extend(t.await.unwrap_or_default());
    }
    let wall_s = t0.elapsed().as_secs_f64();
    let errors = errors.lock().expect("error counts").clone();
    Run { outcomes, wall_s, errors }
}

/// The report of a finished run. `expected` maps (session, question) to the answer a single
/// worker gives; without it, the answers to one question about one image must all agree.
pub fn summarise(
    cfg: &LoadConfig, run: &Run, expected: Option<&HashMap<(String, String), String>>,
) -> Report {
    let (outcomes, wall) = (&run.outcomes, run.wall_s);
    let answered: Vec<&Outcome> = outcomes.iter().filter(|o| o.answer.is_some()).collect();
    // Without a reference, the first answer seen to each question is the one the rest must equal.
    let mut first: HashMap<(String, String), String> = HashMap::new();
    let mut mixed_up = 0;
    for o in &answered {
        let key = (o.session.clone(), o.question.clone());
        let got = o.answer.as_deref().expect("answered");
        let want = match expected {
            Some(e) => e.get(&key).cloned(),
            None => Some(first.entry(key).or_insert_with(|| got.to_string()).clone()),
        };
        if o.crossed || want.as_deref() != Some(got) {
            mixed_up += 1;
        }
    }
    let mut lat: Vec<f64> = answered.iter().map(|o| o.latency.as_secs_f64() * 1e3).collect();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| if lat.is_empty() { 0.0 } else { lat[((lat.len() - 1) as f64 * p).round() as usize] };
    let compress = |page: bool| -> Vec<f64> {
        answered.iter().filter(|o| o.page_codes == page).filter_map(|o| o.compress_ms).collect()
    };
    let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    Report {
        clients: cfg.clients,
        questions: outcomes.len(),
        answered: answered.len(),
        lost: outcomes.len() - answered.len(),
        mixed_up,
        retried: outcomes.iter().filter(|o| o.attempts > 1).count(),
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        max_ms: lat.last().copied().unwrap_or(0.0),
        wall_s: wall,
        answers_per_s: answered.len() as f64 / wall.max(1e-9),
        cache_hit_rate: answered.iter().filter(|o| o.cached).count() as f64 / answered.len().max(1) as f64,
        errors: run.errors.clone(),
        compress_ms_page_codes: mean(&compress(true)),
        compressions_page_codes: compress(true).len(),
        compress_ms_worker_encoded: mean(&compress(false)),
        compressions_worker_encoded: compress(false).len(),
    }
}

/// The expected answers: every distinct question about every planned image, asked of one
/// worker (`url`), a few connections at a time (after the run, so that it warms no cache the
/// run measures).
pub async fn reference(
    cfg: &LoadConfig, url: &str, plan: &[Vec<Visit>],
) -> Result<HashMap<(String, String), String>> {
    let mut todo: HashMap<String, (Visit, Vec<String>)> = HashMap::new();
    for v in plan.iter().flatten() {
        let e = todo.entry(v.session.clone()).or_insert_with(|| (v.clone(), Vec::new()));
        for q in &v.questions {
            if !e.1.contains(q) {
                e.1.push(q.clone());
            }
        }
    }
    let one = LoadConfig { url: url.to_string(), clients: 1, ..cfg.clone() };
    let visits: Vec<Visit> = todo.into_values().map(|(v, qs)| Visit { questions: qs, ..v }).collect();
    let lanes = 4usize;
    let mut chunks: Vec<Vec<Visit>> = vec![Vec::new(); lanes];
    for (i, v) in visits.into_iter().enumerate() {
        chunks[i % lanes].push(v);
    }
    let errors = Arc::new(std::sync::Mutex::new(HashMap::new()));
    let cfg1 = Arc::new(one);
    let tasks: Vec<_> =
        chunks.into_iter().map(|c| tokio::spawn(client(cfg1.clone(), c, errors.clone()))).collect();
    let mut out = HashMap::new();
    for t in tasks {
        for o in t.await.context("a reference client failed")? {
            let a = o
                .answer
                .with_context(|| format!("the reference worker {url} did not answer `{}`", o.question))?;
            out.insert((o.session, o.question), a);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> LoadConfig {
        LoadConfig {
            url: "ws://127.0.0.1:1".into(),
            token: None,
            clients: 4,
            questions: 6,
            per_image: 2,
            revisits: 3,
            max_new_tokens: 4,
            attempts: 2,
            timeout: Duration::from_millis(200),
        }
    }

    fn outcome(session: &str, q: &str, a: Option<&str>, ms: u64) -> Outcome {
        Outcome {
            session: session.into(),
            question: q.into(),
            answer: a.map(str::to_string),
            cached: ms > 10,
            latency: Duration::from_millis(ms),
            attempts: 1,
            crossed: false,
            page_codes: session == "b",
            compress_ms: (ms <= 10).then_some(ms as f64 * 2.0),
        }
    }

    #[test]
    fn page_codes_go_to_an_even_share_of_the_images_and_to_every_visit_of_each() {
        let visit = |s: &str| Visit {
            image: Arc::new(s.as_bytes().to_vec()),
            session: s.into(),
            questions: vec![],
            codes: None,
        };
        let mut plan =
            vec![vec![visit("a"), visit("b"), visit("c")], vec![visit("d"), visit("a"), visit("b")]];
        let mut encoded = Vec::new();
        let n = with_page_codes(&mut plan, 0.5, |img| {
            encoded.push(String::from_utf8(img.to_vec()).unwrap());
            Ok(PageCodes { codes: vec![img[0] as u16], shape: CodesShape { positions: 1, groups: 1 } })
        })
        .unwrap();
        assert_eq!(
            (n, encoded),
            (2, vec!["b".to_string(), "d".to_string()]),
            "half of a, b, c, d, each once"
        );
        let with: Vec<(String, bool)> =
            plan.iter().flatten().map(|v| (v.session.clone(), v.codes.is_some())).collect();
        assert!(with.iter().all(|(s, c)| *c == (s == "b" || s == "d")), "{with:?}");
        assert!(with_page_codes(&mut plan, 1.5, |_| unreachable!()).is_err());
    }

    #[test]
    fn the_plan_shares_images_between_clients() {
        let dir = std::env::temp_dir().join(format!("htc-load-plan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let items: Vec<Item> = (0..10)
            .flat_map(|i| {
                let p = dir.join(format!("{i}.png"));
                std::fs::write(&p, format!("image {i}")).unwrap();
                ["q1", "q2", "q3"].map(|q| Item {
                    id: format!("{i}-{q}"),
                    image: p.clone(),
                    question: q.into(),
                    reference: None,
                    family: None,
                    kind: None,
                })
            })
            .collect();
        let p = plan(&items, &cfg()).unwrap();
        assert_eq!(p.len(), 4);
        // 4 clients × 3 visits / 3 revisits: a pool of 4 images, each visited 3 times.
        let mut visits: HashMap<String, usize> = HashMap::new();
        for c in &p {
            assert_eq!(c.iter().map(|v| v.questions.len()).sum::<usize>(), 6);
            for v in c {
                *visits.entry(v.session.clone()).or_default() += 1;
            }
        }
        assert_eq!(visits.len(), 4);
        assert!(visits.values().all(|&n| n == 3), "{visits:?}");
        let bad = LoadConfig { per_image: 0, ..cfg() };
        assert!(plan(&items, &bad).unwrap_err().to_string().contains("at least 1"));
        assert!(plan(&[], &cfg()).unwrap_err().to_string().contains("no questions"));
    }

    #[test]
    fn the_report_counts_lost_and_mixed_up_answers() {
        let outs = vec![
            outcome("a", "q", Some("red"), 5),
            outcome("a", "q", Some("red"), 20),
            outcome("a", "q", Some("blue"), 30),
            outcome("b", "q", None, 40),
            Outcome { crossed: true, ..outcome("b", "q2", Some("2"), 50) },
        ];
        let run = Run { outcomes: outs, wall_s: 2.0, errors: HashMap::new() };
        let r = summarise(&cfg(), &run, None);
        assert_eq!((r.questions, r.answered, r.lost, r.mixed_up), (5, 4, 1, 2));
        assert_eq!(r.p50_ms, 30.0);
        assert_eq!(r.max_ms, 50.0);
        assert_eq!(r.answers_per_s, 2.0);
        assert_eq!(r.cache_hit_rate, 0.75);
        // The one uncached answer (5 ms, image "a", worker-encoded) compressed in 10 ms.
        assert_eq!((r.compress_ms_worker_encoded, r.compressions_worker_encoded), (Some(10.0), 1));
        assert_eq!((r.compress_ms_page_codes, r.compressions_page_codes), (None, 0));
        let want: HashMap<(String, String), String> =
            [(("a".into(), "q".into()), "blue".into()), (("b".into(), "q2".into()), "2".into())].into();
        let r = summarise(&cfg(), &run, Some(&want));
        assert_eq!(r.mixed_up, 3, "two reds and a crossed frame");
    }

    #[tokio::test]
    async fn a_service_that_is_not_there_loses_every_question_after_its_attempts() {
        let img = std::env::temp_dir().join(format!("htc-load-absent-{}.png", std::process::id()));
        std::fs::write(&img, b"not needed: nothing answers").unwrap();
        let items = vec![Item {
            id: "x".into(),
            image: img,
            question: "q".into(),
            reference: None,
            family: None,
            kind: None,
        }];
        let c = LoadConfig { clients: 1, questions: 2, per_image: 2, revisits: 1, ..cfg() };
        let p = plan(&items, &c).unwrap();
        let r = summarise(&c, &run(&c, p).await, None);
        assert_eq!((r.questions, r.answered, r.lost), (2, 0, 2));
        assert_eq!(r.errors.values().sum::<usize>(), 4, "two attempts each: {:?}", r.errors);
    }
}
