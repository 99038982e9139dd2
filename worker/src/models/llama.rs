//! LLaMA decoder (`LlamaForCausalLM`): RMSNorm, rotate-half RoPE at explicit positions,
//! grouped-query attention with an arbitrary additive `(query, key)` mask, SwiGLU MLP and a
//! per-layer KV cache for decoding. Pure model code: no tokenizer, sampling or I/O.

use anyhow::Result;
use burn::module::Module;
use burn::nn::{Embedding, Linear, RmsNorm};
use burn::tensor::{backend::Backend, DType, Int, Tensor, TensorData};

pub use htc_shared::config::LlamaConfig as Config;

use htc_shared::config::LoraConfig;
use htc_shared::loader::Loader;
use htc_shared::params::ParamNames;

use super::lora::{join_projections, split_last, Lora, Proj};
pub use crate::kernels::attention::causal_mask;
use crate::kernels::attention::{self, Heads, Split};
use crate::kernels::host;
pub use crate::kernels::kv_cache::KvCache;
use crate::kernels::kv_cache::{KvDtype, Slots};
use crate::kernels::linear::split_linear;
use crate::kernels::ops::{rows_owned, x_sigmoid, Residual};
pub use crate::kernels::rope::Rope;
use crate::kernels::rope::RopeAt;

#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    q_proj: Proj<B>,
    k_proj: Proj<B>,
    v_proj: Proj<B>,
    o_proj: Proj<B>,
    /// `q_proj`, `k_proj` and `v_proj` as one product (inference, see [`Llama::with_row_split`];
    /// their weights are views of its weight); `None`: three products.
    #[module(skip)]
    qkv: Option<Linear<B>>,
    /// How f32 CPU inference stores the cache it decodes on (see [`crate::kernels::kv_cache::HostKv`]).
    #[module(skip)]
    kv_dtype: KvDtype,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl<B: Backend> Attention<B> {
    fn load(vb: &Loader<B>, c: &Config) -> Result<Self> {
        let (d, hd) = (c.hidden_size, c.head_dim);
        let bias = c.attention_bias;
        Ok(Self {
            q_proj: Proj::load(vb, "q_proj", d, c.num_attention_heads * hd, bias)?,
            k_proj: Proj::load(vb, "k_proj", d, c.num_key_value_heads * hd, bias)?,
            v_proj: Proj::load(vb, "v_proj", d, c.num_key_value_heads * hd, bias)?,
            o_proj: Proj::load(vb, "o_proj", c.num_attention_heads * hd, d, bias)?,
            qkv: None,
            kv_dtype: KvDtype::F32,
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
            head_dim: hd,
        })
    }

    /// `x: [b, t, d]`; `mask: [t, past + t]` additive; returns the output and the attention
    /// probabilities `[b, heads, t - self_only, past + t]` of the rows that were scored, as
    /// blocks of rows (see [`attention::attend`]).
    /// The first `self_only` rows (the caller guarantees an empty cache) attend to themselves
    /// alone: their output is their own value. `causal`: `mask` is the causal one (see
    /// [`Split`]).
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self, x: Tensor<B, 3>, rope: &RopeAt<B>, mask: Option<&Tensor<B, 4>>, cache: Slots<'_, B>,
        self_only: usize, causal: bool, probs: bool,
    ) -> (Tensor<B, 3>, Vec<Tensor<B, 4>>) {
        let (q, k, v) = self.qkv(x, rope);
        let split = Split { heads: true, causal, probs };
        let (out, probs) = attention::attend(&self.shape(), q, k, v, mask, cache, self_only, split);
        (self.o_proj.forward(out), probs)
    }

    /// The attention's heads and how it runs (see [`Heads`]).
    fn shape(&self) -> Heads {
        Heads {
            heads: self.heads,
            kv_heads: self.kv_heads,
            threads: self.o_proj.split,
            kv_dtype: self.kv_dtype,
        }
    }

    /// Queries `[b, heads, t, hd]`, keys and values `[b, kv_heads, t, hd]` of `x: [b, t, d]`,
    /// RoPE applied.
    fn qkv(&self, x: Tensor<B, 3>, rope: &RopeAt<B>) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
        let [b, t, _] = x.dims();
        let (hd, h, kvh) = (self.head_dim, self.heads, self.kv_heads);
        let (q, k, v) = match &self.qkv {
            // One product; its heads laid out as q's, then k's, then v's.
            Some(qkv) => {
                let y = split_linear(qkv, x, self.o_proj.split);
                // CPU inference in f32: the heads cut out and rotated in one pass.
                if host::applies(&y) {
                    return host::qkv_rope(y, h, kvh, hd, &rope.rows());
                }
                let y = y.reshape([b, t, h + 2 * kvh, hd]).swap_dims(1, 2);
                (y.clone().narrow(1, 0, h), y.clone().narrow(1, h, kvh), y.narrow(1, h + kvh, kvh))
            }
            None => {
                let heads = |y: Tensor<B, 3>, n: usize| y.reshape([b, t, n, hd]).swap_dims(1, 2);
                (
                    heads(self.q_proj.forward(x.clone()), h),
                    heads(self.k_proj.forward(x.clone()), kvh),
                    heads(self.v_proj.forward(x), kvh),
                )
            }
        };
        // Of several positions the heads are strided views (positions lie a row of all heads
        // apart): copied once before RoPE's five elementwise passes.
        let (q, k) = (rows_owned(q), rows_owned(k));
        (rope.apply(q), rope.apply(k), v)
    }
}

#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    gate_proj: Proj<B>,
    up_proj: Proj<B>,
    down_proj: Proj<B>,
    /// `gate_proj` and `up_proj` as one product (inference, see [`Llama::with_row_split`]);
    /// `None`: two products.
    #[module(skip)]
    gate_up: Option<Linear<B>>,
}

impl<B: Backend> Mlp<B> {
    fn load(vb: &Loader<B>, c: &Config) -> Result<Self> {
        let (d, i, bias) = (c.hidden_size, c.intermediate_size, c.mlp_bias);
        Ok(Self {
            gate_proj: Proj::load(vb, "gate_proj", d, i, bias)?,
            up_proj: Proj::load(vb, "up_proj", d, i, bias)?,
            down_proj: Proj::load(vb, "down_proj", i, d, bias)?,
            gate_up: None,
        })
    }

    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let (gate, up) = match &self.gate_up {
            Some(gate_up) => {
                let y = split_linear(gate_up, x, self.down_proj.split);
                // CPU inference in f32: the gate in one pass.
                if host::applies(&y) {
                    return self.down_proj.forward(host::swiglu(y));
                }
                let i = self.up_proj.dims()[1];
                let mut parts = split_last(y, &[i, i]).into_iter();
                // Of several rows each part is strided (its rows lie `2 i` apart): copied once
                // before the elementwise passes.
                let mut next = || rows_owned(parts.next().expect("two parts"));
                (next(), next())
            }
            None => (self.gate_proj.forward(x.clone()), self.up_proj.forward(x)),
        };
        self.down_proj.forward(x_sigmoid(gate, 1.0) * up)
    }
}

#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    self_attn: Attention<B>,
    mlp: Mlp<B>,
    input_layernorm: RmsNorm<B>,
    post_attention_layernorm: RmsNorm<B>,
}

impl<B: Backend> DecoderLayer<B> {
    fn load(vb: &Loader<B>, c: &Config) -> Result<Self> {
        Ok(Self {
            self_attn: Attention::load(&vb.pp("self_attn"), c)?,
            mlp: Mlp::load(&vb.pp("mlp"), c)?,
            input_layernorm: vb.rms_norm("input_layernorm", c.hidden_size, c.rms_norm_eps)?,
            post_attention_layernorm: vb.rms_norm(
                "post_attention_layernorm",
                c.hidden_size,
                c.rms_norm_eps,
            )?,
        })
    }
}

/// Input to continue from: what is already cached, the new input embeddings `[1, t, d]`, the
/// RoPE position of the first of them, and their additive mask over `cached + new` keys
/// (`None`: causal).
pub struct Prompt<B: Backend> {
    pub cache: KvCache<B>,
    pub embeds: Tensor<B, 3>,
    pub first_position: usize,
    pub mask: Option<Tensor<B, 2>>,
}

/// Options for one forward pass.
pub struct Step<'a, B: Backend> {
    /// Absolute RoPE position of each input token.
    pub positions: &'a [usize],
    /// Additive mask `[t, cached + t]`; `None` means causal.
    pub mask: Option<Tensor<B, 2>>,
    /// Collect head-averaged attention probabilities of every layer.
    pub want_attention: bool,
    /// How many leading inputs attend only to themselves under `mask` (the star mask's BOS,
    /// anchors and patches): their attention output is their own value, so their score rows
    /// are skipped (and they get no attention rows, see `Output::attention_from`). Only honoured
    /// with an empty cache; 0 turns it off. Exact, not an approximation: softmax over one open
    /// key is 1.
    pub self_only: usize,
}

/// The output of [`Llama::forward`].
pub struct Output<B: Backend> {
    /// Final hidden states after the last norm, `[b, t, d]`.
    pub hidden: Tensor<B, 3>,
    /// Per layer, head-averaged attention `[b, t - attention_from, cached + t]` of the inputs
    /// from `attention_from` on (empty unless asked).
    pub attention: Vec<Tensor<B, 3>>,
    /// The first input with an attention row (`Step::self_only` rows have none).
    pub attention_from: usize,
    /// Per layer, its normalised input `[b, t, d]`: what that layer's keys and values are
    /// computed from (training probes read them; holding them costs no copy).
    pub layer_inputs: Vec<Tensor<B, 3>>,
    /// The residual stream after the last layer, before the final norm `[b, t, d]`, when it is
    /// a tensor (always in training; `None` when the fused host kernels hold it).
    pub residual: Option<Tensor<B, 3>>,
}

#[derive(Module, Debug)]
pub struct Llama<B: Backend> {
    embed_tokens: Embedding<B>,
    layers: Vec<DecoderLayer<B>>,
    norm: RmsNorm<B>,
    /// The output head; tied checkpoints get a copy of the embedding matrix, transposed.
    lm_head: Linear<B>,
    #[module(skip)]
    rope: Rope,
    #[module(skip)]
    config: Config,
    /// Threads the output head's few-row products are split over (1: not split).
    #[module(skip)]
    split: usize,
}

impl<B: Backend> Llama<B> {
    /// A randomly initialised decoder (burn's initialisers), with parameter ids derived from checkpoint keys.
    pub fn init(c: &Config, device: &B::Device) -> Result<Self> {
        let vb = Loader::init(device);
        Self::load(&vb, &vb, c)
    }

    /// `model` points at the `model.*` level; `lm_head` at the head's own prefix. A tied head
    /// (no head in the checkpoint) is read from the embeddings but kept under the head's key.
    /// Parameter ids come from checkpoint keys.
    pub fn load(model: &Loader<B>, lm_head: &Loader<B>, c: &Config) -> Result<Self> {
        let layers = (0..c.num_hidden_layers)
            .map(|i| DecoderLayer::load(&model.pp(format!("layers.{i}")), c))
            .collect::<Result<Vec<_>>>()?;
        let lm_head = if c.tie_word_embeddings && !lm_head.contains("weight") {
            lm_head.tied_linear(&model.pp("embed_tokens"), c.vocab_size, c.hidden_size)?
        } else {
            lm_head.linear("", c.hidden_size, c.vocab_size, false)?
        };
        let m = Self {
            embed_tokens: model.embedding("embed_tokens", c.vocab_size, c.hidden_size)?,
            layers,
            norm: model.rms_norm("norm", c.hidden_size, c.rms_norm_eps)?,
            lm_head,
            rope: Rope::new(c.head_dim, c.rope_theta),
            config: c.clone(),
            split: 1,
        };
        Ok(m)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn device(&self) -> B::Device {
        self.embed_tokens.weight.device()
    }

    pub fn new_cache(&self) -> KvCache<B> {
        KvCache::new(self.layers.len())
    }

    /// Checks that `ids` is a non-empty run of ids in the vocabulary; the one place ids are
    /// range-checked before embedding.
    pub fn check_ids(&self, ids: &[u32]) -> Result<()> {
        let vocab = self.config.vocab_size;
        if ids.is_empty() {
            anyhow::bail!("empty prompt: give 1 or more token ids");
        }
        match ids.iter().find(|&&i| i as usize >= vocab) {
            Some(bad) => {
                anyhow::bail!("token id {bad} is out of range (token ids below {vocab}, the vocabulary size)")
            }
            None => Ok(()),
        }
    }

    /// Converts prompt ids that may be negative (image placeholders) to checked vocabulary ids.
    pub fn checked_ids(&self, ids: &[i64]) -> Result<Vec<u32>> {
        let vocab = self.config.vocab_size;
        let out = ids
            .iter()
            .map(|&i| {
                u32::try_from(i).map_err(|_| {
                    anyhow::anyhow!(
                        "token id {i} is out of range (token ids below {vocab}, the vocabulary size)"
                    )
                })
            })
            .collect::<Result<Vec<u32>>>()?;
        self.check_ids(&out)?;
        Ok(out)
    }

    /// Token embeddings `[1, t, d]`.
    pub fn embed(&self, ids: &[u32]) -> Tensor<B, 3> {
        let data = TensorData::new(ids.iter().map(|&i| i as i64).collect::<Vec<_>>(), [1, ids.len()]);
        self.embed_tokens.forward(Tensor::<B, 2, Int>::from_data(data, &self.device()))
    }

    /// Token embeddings `[b, t, d]` of a `[b, t]` batch of ids (already range-checked).
    pub fn embed_batch(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.embed_tokens.forward(ids)
    }

    /// Runs the decoder over `embeds: [b, t, d]`, appending to `cache`.
    pub fn forward(&self, embeds: Tensor<B, 3>, step: Step<'_, B>, cache: &mut KvCache<B>) -> Output<B> {
        let device = embeds.device();
        let [_, t, _] = embeds.dims();
        let past = cache.seq_len();
        let hd = self.config.head_dim;
        let rope = self.rope.at::<B>(step.positions, [1, 1, step.positions.len(), hd], &device);
        let causal = step.mask.is_none();
        let mask = step
            .mask
            .or_else(|| (t > 1).then(|| causal_mask::<B>(t, past, &device)))
            .map(|m| m.unsqueeze::<4>());
        let self_only = if past == 0 { step.self_only.min(t) } else { 0 };
        let mut stream = Residual::new(embeds, self.fused(&device));
        let mut normed = stream.add_norm(None, self.input_norm(0));
        let mut attention = Vec::new();
        let mut layer_inputs = Vec::with_capacity(self.layers.len());
        for (li, (layer, slots)) in self.layers.iter().zip(cache.all_slots()).enumerate() {
            layer_inputs.push(normed.clone());
            let (h, probs) = layer.self_attn.forward(
                normed,
                &rope,
                mask.as_ref(),
                slots,
                self_only,
                causal,
                step.want_attention,
            );
            if step.want_attention {
                // Blocks of a causal prefill end at their last row: zeros for the keys after it.
                let means = probs
                    .into_iter()
                    .map(|p| {
                        let m = p.mean_dim(1).squeeze_dim::<3>(1);
                        let [mb, rows, w] = m.dims();
                        match past + t - w {
                            0 => m,
                            after => Tensor::cat(vec![m, Tensor::zeros([mb, rows, after], &device)], 2),
                        }
                    })
                    .collect();
                attention.push(Tensor::cat(means, 1));
            }
            let m = layer.mlp.forward(stream.add_norm(Some(h), &layer.post_attention_layernorm));
            normed = stream.add_norm(Some(m), self.input_norm(li + 1));
        }
        Output {
            hidden: normed,
            attention,
            attention_from: self_only,
            layer_inputs,
            residual: stream.tensor(),
        }
    }

    /// The norm before layer `i`'s attention; past the last layer, the final norm.
    fn input_norm(&self, i: usize) -> &RmsNorm<B> {
        self.layers.get(i).map_or(&self.norm, |l| &l.input_layernorm)
    }

    /// Whether the norms, RoPE and gate run as fused kernels on the host ([`host`]): CPU
    /// inference (products split over threads, see [`Self::with_row_split`]) in f32.
    fn fused(&self, device: &B::Device) -> bool {
        self.split > 1 && self.embed_tokens.weight.val().dtype() == DType::F32 && !B::ad_enabled(device)
    }

    /// One decoding step for `b` independent sequences at once (micro-batching). Row `i`
    /// feeds token `ids[i]` at RoPE position `positions[i]`; `caches[i]` holds its keys and
    /// values and grows by one. The projections and MLPs run on the `b` rows together (each
    /// weight read once per step); the attention runs per row on the row's own cache and
    /// tail, as a lone step does (no padding, no copy of the caches), on rayon's pool when the
    /// decoder splits its products over threads. Returns logits `[b, vocab]`.
    pub fn decode_batch(&self, ids: &[u32], positions: &[usize], caches: &mut [KvCache<B>]) -> Tensor<B, 2> {
        let b = ids.len();
        let device = self.device();
        let hd = self.config.head_dim;
        let rope = self.rope.at::<B>(positions, [b, 1, 1, hd], &device);
        let x = Tensor::cat(ids.iter().map(|&i| self.embed(&[i])).collect(), 0);
        let mut stream = Residual::new(x, self.fused(&device));
        let mut normed = stream.add_norm(None, self.input_norm(0));
        for (li, layer) in self.layers.iter().enumerate() {
            let attn = &layer.self_attn;
            let (q, k, v) = attn.qkv(normed, &rope);
            let slots: Vec<Slots<'_, B>> = caches.iter_mut().map(|c| c.slots(li)).collect();
            let out = attention::attend_rows(&attn.shape(), q, k, v, slots);
            let h = attn.o_proj.forward(out);
            let m = layer.mlp.forward(stream.add_norm(Some(h), &layer.post_attention_layernorm));
            normed = stream.add_norm(Some(m), self.input_norm(li + 1));
        }
        let logits = self.logits(normed); // [b, 1, vocab]
        let [_, _, vocab] = logits.dims();
        logits.reshape([b, vocab])
    }

    /// Attaches LoRA adapters to the projections `cfg` targets, next to each base weight's
    /// checkpoint key (found through `names`): read from `vb`, or fresh (B = 0) when `vb`
    /// initialises.
    pub fn with_lora(mut self, cfg: &LoraConfig, vb: &Loader<B>, names: &ParamNames) -> Result<Self> {
        cfg.validate()?;
        for layer in self.layers.iter_mut() {
            let (a, m) = (&mut layer.self_attn, &mut layer.mlp);
            for (t, p) in [
                ("q", &mut a.q_proj),
                ("k", &mut a.k_proj),
                ("v", &mut a.v_proj),
                ("o", &mut a.o_proj),
                ("gate", &mut m.gate_proj),
                ("up", &mut m.up_proj),
                ("down", &mut m.down_proj),
            ] {
                if !cfg.targets(t) {
                    continue;
                }
                let key = names
                    .get(&p.linear.weight.id)
                    .and_then(|n| n.key.strip_suffix(".weight"))
                    .ok_or_else(|| anyhow::anyhow!("the `{t}` projection has no checkpoint key"))?;
                let [d_in, d_out] = p.dims();
                p.lora = Some(Lora::load(&vb.pp(key), d_in, d_out, cfg.rank, cfg.scale())?);
            }
        }
        Ok(self)
    }

    /// Whether any projection carries a LoRA adapter.
    pub fn has_lora(&self) -> bool {
        self.layers.iter().any(|l| {
            let (a, m) = (&l.self_attn, &l.mlp);
            [&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj, &m.gate_proj, &m.up_proj, &m.down_proj]
                .iter()
                .any(|p| p.lora.is_some())
        })
    }

    /// The decoder with `f` applied to each of the seven projections of every layer (and their
    /// joined products dropped).
    fn map_projections(mut self, f: impl Fn(Proj<B>) -> Proj<B>) -> Self {
        self.layers = self
            .layers
            .into_iter()
            .map(|mut l| {
                let (a, m) = (l.self_attn, l.mlp);
                l.self_attn = Attention {
                    q_proj: f(a.q_proj),
                    k_proj: f(a.k_proj),
                    v_proj: f(a.v_proj),
                    o_proj: f(a.o_proj),
                    qkv: None,
                    ..a
                };
                l.mlp = Mlp {
                    gate_proj: f(m.gate_proj),
                    up_proj: f(m.up_proj),
                    down_proj: f(m.down_proj),
                    gate_up: None,
                };
                l
            })
            .collect();
        self
    }

    /// The decoder with every base weight frozen (no gradients kept) and the LoRA adapters
    /// left as they are.
    pub fn freeze_base(self) -> Self {
        let mut m = self.map_projections(|p| Proj { linear: p.linear.no_grad(), ..p });
        m.embed_tokens = m.embed_tokens.no_grad();
        m.norm = m.norm.no_grad();
        m.lm_head = m.lm_head.no_grad();
        for l in m.layers.iter_mut() {
            l.input_layernorm = l.input_layernorm.clone().no_grad();
            l.post_attention_layernorm = l.post_attention_layernorm.clone().no_grad();
        }
        m
    }

    /// The decoder with its products of a few rows (decoding steps) split over `threads`
    /// threads (see [`split_linear`]); 1 turns splitting off. For CPU inference:
    /// the CPU matmul kernels run a one-row product on one core. With more than one thread the
    /// products of one input also run as one: q, k and v, and gate and up (see
    /// [`super::lora::join_projections`]: fewer products, each one dispatch over the threads).
    pub fn with_row_split(mut self, threads: usize) -> Self {
        let threads = threads.max(1);
        self.split = threads;
        let mut m = self.map_projections(|p| Proj { split: threads, ..p });
        if threads > 1 {
            for l in m.layers.iter_mut() {
                let a = &mut l.self_attn;
                a.qkv = join_projections(&mut [&mut a.q_proj, &mut a.k_proj, &mut a.v_proj]);
                let p = &mut l.mlp;
                p.gate_up = join_projections(&mut [&mut p.gate_proj, &mut p.up_proj]);
            }
        }
        m
    }

    /// The decoder storing the caches it decodes on in f32 CPU inference (see
    /// [`Self::with_row_split`]) in `dtype` (see [`crate::kernels::kv_cache::HostKv`]); elsewhere the caches stay
    /// tensors in the model's dtype.
    pub fn with_kv_dtype(mut self, dtype: KvDtype) -> Self {
        for l in self.layers.iter_mut() {
            l.self_attn.kv_dtype = dtype;
        }
        self
    }

    /// The thread count of [`Self::with_row_split`] (1: not split, as on the GPU backends).
    pub fn row_split(&self) -> usize {
        self.split
    }

    /// The decoder with every LoRA adapter folded into its base weight.
    pub fn merged(self) -> Self {
        self.map_projections(Proj::merged)
    }

    /// Logits `[b, t, vocab]` from final hidden states.
    pub fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        split_linear(&self.lm_head, hidden, self.split)
    }
}
