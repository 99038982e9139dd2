//! Prometheus metrics of the engine and the server (`/metrics`).

use anyhow::Result;

/// Prometheus metrics of the engine and the server (`/metrics`).
pub struct Metrics {
    pub registry: prometheus::Registry,
    pub questions: prometheus::IntCounter,
    pub cache_hits: prometheus::IntCounter,
    pub compressions: prometheus::IntCounter,
    pub tokens: prometheus::IntCounter,
    pub cancelled: prometheus::IntCounter,
    /// Encoder weight bytes sent to pages (`/api/encoder/<sha256>.safetensors`).
    pub encoder_bytes: prometheus::IntCounter,
    pub errors: prometheus::IntCounterVec,
    pub connections: prometheus::IntGauge,
    /// Questions accepted and waiting for the model (what an autoscaler watches).
    pub queue_depth: prometheus::IntGauge,
    /// Answers being decoded (at most `--max-batch`).
    pub active: prometheus::IntGauge,
    pub answer_seconds: prometheus::Histogram,
    /// Images per compression batch (new images admitted together are compressed at once).
    pub compression_batch: prometheus::Histogram,
    /// Images whose MGVQ codes the worker computed (its encoder ran, unverified or not).
    pub mgvq_encodes: prometheus::IntCounter,
    /// Images compressed from the codes a client sent.
    pub client_codes_used: prometheus::IntCounter,
    /// Client codes checked against the worker's encoder, and those refused.
    pub client_codes_verified: prometheus::IntCounter,
    pub client_codes_refused: prometheus::IntCounter,
}

impl Metrics {
    pub fn new() -> Result<Self> {
        use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
        let registry = Registry::new();
        let questions = IntCounter::new("htc_questions_total", "Questions accepted into the queue")?;
        let cache_hits =
            IntCounter::new("htc_cache_hits_total", "Questions answered from a cached compressed image")?;
        let compressions =
            IntCounter::new("htc_compressions_total", "Images compressed (ViT, MGVQ and the voco prefix)")?;
        let tokens = IntCounter::new("htc_generated_tokens_total", "Tokens generated")?;
        let cancelled = IntCounter::new("htc_cancelled_total", "Answers stopped by cancel or disconnect")?;
        let encoder_bytes = IntCounter::new(
            "htc_encoder_weight_bytes_total",
            "MGVQ encoder weight bytes sent to pages that tokenise images themselves",
        )?;
        let errors =
            IntCounterVec::new(Opts::new("htc_errors_total", "Error frames sent, by code"), &["code"])?;
        let connections = IntGauge::new("htc_open_connections", "Open WebSocket connections")?;
        let queue_depth = IntGauge::new(
            "htc_queue_depth",
            "Questions accepted and waiting for the model (not yet decoding)",
        )?;
        let active = IntGauge::new("htc_active_answers", "Answers being decoded together")?;
        let answer_seconds = Histogram::with_opts(HistogramOpts::new(
            "htc_answer_seconds",
            "Wall time of an answer, queue excluded",
        ))?;
        let compression_batch = Histogram::with_opts(
            HistogramOpts::new("htc_compression_batch_images", "Images compressed together in one batch")
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0]),
        )?;
        let mgvq_encodes = IntCounter::new(
            "htc_mgvq_encodes_total",
            "Images the worker ran the MGVQ encoder on to compute their codes (none sent, or mode without them)",
        )?;
        let client_codes_used = IntCounter::new(
            "htc_client_codes_used_total",
            "Images compressed from MGVQ codes their page sent",
        )?;
        let client_codes_verified = IntCounter::new(
            "htc_client_codes_verified_total",
            "Client MGVQ codes checked against the worker's encoder (--verify-client-codes)",
        )?;
        let client_codes_refused = IntCounter::new(
            "htc_client_codes_refused_total",
            "Client MGVQ codes refused: some differ from the worker's beyond a near-tie",
        )?;
        for c in [
            &questions,
            &cache_hits,
            &compressions,
            &tokens,
            &cancelled,
            &encoder_bytes,
            &mgvq_encodes,
            &client_codes_used,
            &client_codes_verified,
            &client_codes_refused,
        ] {
            registry.register(Box::new(c.clone()))?;
        }
        registry.register(Box::new(errors.clone()))?;
        for g in [&connections, &queue_depth, &active] {
            registry.register(Box::new(g.clone()))?;
        }
        registry.register(Box::new(answer_seconds.clone()))?;
        registry.register(Box::new(compression_batch.clone()))?;
        Ok(Self {
            registry,
            questions,
            cache_hits,
            compressions,
            encoder_bytes,
            tokens,
            cancelled,
            errors,
            connections,
            queue_depth,
            active,
            answer_seconds,
            compression_batch,
            mgvq_encodes,
            client_codes_used,
            client_codes_verified,
            client_codes_refused,
        })
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = String::new();
        let enc = prometheus::TextEncoder::new();
        if let Err(e) = enc.encode_utf8(&self.registry.gather(), &mut buf) {
            tracing::warn!("cannot encode metrics: {e}");
        }
        buf
    }
}
