//! Random weights for models of any size, for the demo server and benchmarks: unit-scale
//! weights under the llava-hf key layout, loaded through the same code as real checkpoints.

use std::collections::HashMap;

use rand::{rngs::StdRng, Rng, SeedableRng};
use rand_distr::StandardNormal;

use htc_shared::config::{BlockType, MgvqConfig};
use htc_shared::config::{HtcConfig, LlamaConfig};

use super::{HostTensor, WeightSource};
use crate::models::llava::Config;

/// How weights are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// Unit-scale: weights N(0, 1/fan_in), norms N(1, 0.1²), biases N(0, 0.1²), embeddings
    /// N(0, 1). Activations keep their scale through any depth (fixtures, benchmarks).
    UnitScale,
    /// Training from scratch, as transformers' `_init_weights` for LLaMA/CLIP with
    /// `initializer_range` = std: every weight and embedding N(0, std²), norms 1, biases 0.
    Normal(f32),
}

struct Gen {
    rng: StdRng,
    map: HashMap<String, HostTensor>,
    init: Init,
}

impl Gen {
    fn new(seed: u64, init: Init) -> Self {
        Self { rng: StdRng::seed_from_u64(seed), map: HashMap::new(), init }
    }

    /// A weight of unit-scale std `unit` under the generator's policy.
    fn weight(&mut self, name: String, shape: Vec<usize>, unit: f32) {
        let std = match self.init {
            Init::UnitScale => unit,
            Init::Normal(s) => s,
        };
        self.put(name, shape, std, 0.0);
    }

    fn bias(&mut self, name: String, n: usize) {
        let std = if self.init == Init::UnitScale { 0.1 } else { 0.0 };
        self.put(name, vec![n], std, 0.0);
    }

    fn put(&mut self, name: String, shape: Vec<usize>, std: f32, mean: f32) {
        let n = shape.iter().product();
        let data = (0..n).map(|_| mean + std * self.rng.sample::<f32, _>(StandardNormal)).collect();
        self.map.insert(name, HostTensor { shape, data });
    }
    fn linear(&mut self, p: &str, d_in: usize, d_out: usize, bias: bool) {
        self.weight(format!("{p}.weight"), vec![d_out, d_in], 1.0 / (d_in as f32).sqrt());
        if bias {
            self.bias(format!("{p}.bias"), d_out);
        }
    }
    fn norm(&mut self, p: &str, d: usize, bias: bool) {
        let std = if self.init == Init::UnitScale { 0.1 } else { 0.0 };
        self.put(format!("{p}.weight"), vec![d], std, 1.0);
        if bias {
            self.bias(format!("{p}.bias"), d);
        }
    }
}

fn llava_into(g: &mut Gen, c: &Config) {
    let v = &c.vision;
    let vp = "vision_tower.vision_model";
    g.weight(
        format!("{vp}.embeddings.patch_embedding.weight"),
        vec![v.hidden_size, v.num_channels, v.patch_size, v.patch_size],
        1.0 / ((v.num_channels * v.patch_size * v.patch_size) as f32).sqrt(),
    );
    g.weight(format!("{vp}.embeddings.class_embedding"), vec![v.hidden_size], 1.0);
    g.weight(
        format!("{vp}.embeddings.position_embedding.weight"),
        vec![v.num_patches() + 1, v.hidden_size],
        1.0,
    );
    g.norm(&format!("{vp}.pre_layrnorm"), v.hidden_size, true);
    for i in 0..v.num_hidden_layers {
        let p = format!("{vp}.encoder.layers.{i}");
        for n in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            g.linear(&format!("{p}.self_attn.{n}"), v.hidden_size, v.hidden_size, true);
        }
        g.norm(&format!("{p}.layer_norm1"), v.hidden_size, true);
        g.norm(&format!("{p}.layer_norm2"), v.hidden_size, true);
        g.linear(&format!("{p}.mlp.fc1"), v.hidden_size, v.intermediate_size, true);
        g.linear(&format!("{p}.mlp.fc2"), v.intermediate_size, v.hidden_size, true);
    }
    let t = &c.text;
    g.linear("multi_modal_projector.linear_1", v.hidden_size, t.hidden_size, true);
    g.linear("multi_modal_projector.linear_2", t.hidden_size, t.hidden_size, true);
    random_llama_into(g, t, "language_model.model", "language_model.lm_head");
}

/// Random LLaMA weights for `t` under `model.*` / `lm_head`.
pub fn random_llama(t: &LlamaConfig, seed: u64) -> WeightSource {
    let mut g = Gen::new(seed, Init::UnitScale);
    random_llama_into(&mut g, t, "model", "lm_head");
    WeightSource::Memory(g.map)
}

fn random_llama_into(g: &mut Gen, t: &LlamaConfig, lm: &str, head: &str) {
    let (d, hd) = (t.hidden_size, t.head_dim);
    g.weight(format!("{lm}.embed_tokens.weight"), vec![t.vocab_size, d], 1.0);
    for i in 0..t.num_hidden_layers {
        let p = format!("{lm}.layers.{i}");
        g.linear(&format!("{p}.self_attn.q_proj"), d, t.num_attention_heads * hd, false);
        g.linear(&format!("{p}.self_attn.k_proj"), d, t.num_key_value_heads * hd, false);
        g.linear(&format!("{p}.self_attn.v_proj"), d, t.num_key_value_heads * hd, false);
        g.linear(&format!("{p}.self_attn.o_proj"), t.num_attention_heads * hd, d, false);
        g.linear(&format!("{p}.mlp.gate_proj"), d, t.intermediate_size, false);
        g.linear(&format!("{p}.mlp.up_proj"), d, t.intermediate_size, false);
        g.linear(&format!("{p}.mlp.down_proj"), t.intermediate_size, d, false);
        g.norm(&format!("{p}.input_layernorm"), d, false);
        g.norm(&format!("{p}.post_attention_layernorm"), d, false);
    }
    g.norm(&format!("{lm}.norm"), d, false);
    if !t.tie_word_embeddings {
        g.linear(head, d, t.vocab_size, false);
    }
}

/// Random unit-scale weights for the HTC parts (`htc.*`, and `mgvq.*` when the mode uses
/// MGVQ), added to a random LLaVA of `llava`.
pub fn random_htc(llava: &Config, htc: &HtcConfig, seed: u64) -> WeightSource {
    htc_weights(llava, htc, seed, Init::UnitScale)
}

/// Weights for a whole HTC model drawn under `init` (the LLaVA part with `seed`, the HTC and
/// MGVQ parts with `seed + 1`). MGVQ is always unit-scale: it is replaced by a trained
/// tokenizer or kept frozen.
pub fn htc_weights(llava: &Config, htc: &HtcConfig, seed: u64, init: Init) -> WeightSource {
    let mut g = Gen::new(seed, init);
    llava_into(&mut g, llava);
    g.rng = StdRng::seed_from_u64(seed.wrapping_add(1));
    let d = llava.text.hidden_size;
    g.weight("htc.voco_embeddings".into(), vec![htc.n_voco, d], 1.0);
    if let (true, Some(m)) = (htc.uses_discrete(), &htc.mgvq) {
        g.init = Init::UnitScale;
        random_mgvq_into(&mut g, m, "mgvq");
        g.init = init;
        let widths = crate::models::htc::discrete_widths(
            m.q_len(),
            htc.discrete_hidden,
            htc.discrete_layers,
            htc.n_discrete * d,
        );
        for (i, w) in widths.windows(2).enumerate() {
            g.linear(&format!("htc.discrete_projector.linear_{}", i + 1), w[0], w[1], true);
        }
    }
    WeightSource::Memory(g.map)
}

fn random_mgvq_into(g: &mut Gen, c: &MgvqConfig, p: &str) {
    let conv = |g: &mut Gen, name: String, cin: usize, cout: usize, k: usize, bias: bool, groups: usize| {
        g.put(
            format!("{name}.weight"),
            vec![cout, cin / groups, k, k],
            1.0 / ((cin / groups * k * k) as f32).sqrt(),
            0.0,
        );
        if bias {
            g.put(format!("{name}.bias"), vec![cout], 0.1, 0.0);
        }
    };
    let (w, dl) = (&c.width_list, &c.depth_list);
    let e = format!("{p}.encoder");
    let first = if dl[0] == 0 { w[1] / 4 } else { w[0] };
    conv(g, format!("{e}.project_in.conv.conv"), 3, first, 3, true, 1);
    for s in 0..w.len() {
        for b in 0..dl[s] {
            let q = format!("{e}.stages.{s}.op_list.{b}");
            match c.block_type[s] {
                BlockType::ResBlock => {
                    conv(g, format!("{q}.main.conv1.conv"), w[s], w[s], 3, true, 1);
                    conv(g, format!("{q}.main.conv2.conv"), w[s], w[s], 3, false, 1);
                    g.norm(&format!("{q}.main.conv2.norm"), w[s], true);
                }
                BlockType::EvitGlu => {
                    let mid = w[s] * c.expand_ratio;
                    conv(g, format!("{q}.context_module.main.qkv.conv"), w[s], 3 * w[s], 1, false, 1);
                    conv(g, format!("{q}.context_module.main.proj.conv"), w[s], w[s], 1, false, 1);
                    g.norm(&format!("{q}.context_module.main.proj.norm"), w[s], true);
                    conv(g, format!("{q}.local_module.main.inverted_conv.conv"), w[s], 2 * mid, 1, true, 1);
                    conv(
                        g,
                        format!("{q}.local_module.main.depth_conv.conv"),
                        2 * mid,
                        2 * mid,
                        3,
                        true,
                        2 * mid,
                    );
                    conv(g, format!("{q}.local_module.main.point_conv.conv"), mid, w[s], 1, false, 1);
                    g.norm(&format!("{q}.local_module.main.point_conv.norm"), w[s], true);
                }
            }
        }
        if s + 1 < w.len() && dl[s] > 0 {
            conv(
                g,
                format!("{e}.stages.{s}.op_list.{}.main.conv.conv", dl[s]),
                w[s],
                w[s + 1] / 4,
                3,
                true,
                1,
            );
        }
    }
    let lc = c.latent_channels;
    conv(g, format!("{e}.project_out.main.op_list.0.conv"), *w.last().expect("validated"), lc, 3, true, 1);
    conv(g, format!("{p}.quant_conv"), lc, lc, 1, true, c.groups);
    g.put(format!("{p}.quantize.embedding.weight"), vec![c.codebook_size, c.group_dim()], 1.0, 0.0);
}

/// The demo model's name on its model card.
pub const DEMO_NAME: &str = "htc-demo-random";

/// What the demo model's card says about it.
pub const DEMO_ABOUT: &str = "This model has random weights (the worker was started without a \
    model): it has learnt nothing, so its answers are noise, whatever the picture or the question. \
    It is here to show how the page and the worker work.";

/// The demo model's shapes: LLaVA-shaped (CLIP at 336 px with 576 patches) with MGVQ
/// f16c32_g8's geometry at reduced width, mode `htc`.
pub fn demo_configs() -> (Config, HtcConfig) {
    use htc_shared::config::{ClipVisionConfig, LlavaLayout};
    let vision = ClipVisionConfig {
        hidden_size: 64,
        intermediate_size: 128,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_channels: 3,
        image_size: 336,
        patch_size: 14,
        layer_norm_eps: 1e-5,
    };
    let text = LlamaConfig::from_json(&serde_json::json!({
        "vocab_size": 512, "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5
    }))
    .expect("valid demo config");
    let mut mgvq = MgvqConfig::f16c32_g8();
    mgvq.width_list = vec![32, 32, 64, 64, 128];
    mgvq.depth_list = vec![0, 1, 1, 1, 1];
    let l = Config {
        layout: LlavaLayout::LlavaHf,
        text,
        vision,
        image_token_id: 511,
        select_layer: -2,
        projector_mlp: true,
    };
    (l, HtcConfig::paper(mgvq, 256))
}

/// The randomly initialised demo model (unit-scale weights, seed 0, loaded through the
/// checkpoint path) and its image preprocessing.
pub fn demo_model<B: burn::tensor::backend::Backend>(
    device: &B::Device,
) -> anyhow::Result<(crate::models::htc::Htc<B>, htc_shared::preprocess::ClipPreprocess)> {
    use crate::models::{htc::Htc, llava::Llava};
    let (l, h) = demo_configs();
    let src = random_htc(&l, &h, 0);
    let vb = super::Loader::<B>::new(&src, device);
    let m = Htc::load(&vb, Llava::load(&vb, &l)?, &h)?;
    Ok((m, htc_shared::preprocess::ClipPreprocess::llava(l.vision.image_size as u32)))
}
