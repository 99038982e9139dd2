//! Randomly initialised models of any size, for the demo server and benchmarks: unit-scale
//! weights under the llava-hf key layout, loaded through the same code as real checkpoints.

use std::collections::HashMap;

use rand::{rngs::StdRng, Rng, SeedableRng};
use rand_distr::StandardNormal;

use htc_shared::config::{ClipVisionConfig, LlamaConfig};

use crate::models::llava::{Config, Layout};
use crate::weights::{HostTensor, WeightSource};

struct Gen {
    rng: StdRng,
    map: HashMap<String, HostTensor>,
}

impl Gen {
    fn put(&mut self, name: String, shape: Vec<usize>, std: f32, mean: f32) {
        let n = shape.iter().product();
        let data = (0..n).map(|_| mean + std * self.rng.sample::<f32, _>(StandardNormal)).collect();
        self.map.insert(name, HostTensor { shape, data });
    }
    fn linear(&mut self, p: &str, d_in: usize, d_out: usize, bias: bool) {
        self.put(format!("{p}.weight"), vec![d_out, d_in], 1.0 / (d_in as f32).sqrt(), 0.0);
        if bias {
            self.put(format!("{p}.bias"), vec![d_out], 0.1, 0.0);
        }
    }
    fn norm(&mut self, p: &str, d: usize, bias: bool) {
        self.put(format!("{p}.weight"), vec![d], 0.1, 1.0);
        if bias {
            self.put(format!("{p}.bias"), vec![d], 0.1, 0.0);
        }
    }
}

/// The demo's LLaVA shape: a small CLIP at 336 px (576 patches, as the real tower) and a small
/// LLaMA. Small enough to start in seconds on a CPU.
pub fn tiny_llava_config() -> Config {
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
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5
    }))
    .expect("valid demo config");
    Config { layout: Layout::LlavaHf, text, vision, image_token_id: 511, select_layer: -2, projector_mlp: true }
}

/// Random llava-hf-layout weights for `c`.
pub fn random_llava(c: &Config, seed: u64) -> WeightSource {
    let mut g = Gen { rng: StdRng::seed_from_u64(seed), map: HashMap::new() };
    let v = &c.vision;
    let vp = "vision_tower.vision_model";
    g.put(format!("{vp}.embeddings.patch_embedding.weight"), vec![v.hidden_size, v.num_channels, v.patch_size, v.patch_size], 1.0 / ((v.num_channels * v.patch_size * v.patch_size) as f32).sqrt(), 0.0);
    g.put(format!("{vp}.embeddings.class_embedding"), vec![v.hidden_size], 1.0, 0.0);
    g.put(format!("{vp}.embeddings.position_embedding.weight"), vec![v.num_patches() + 1, v.hidden_size], 1.0, 0.0);
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
    random_llama_into(&mut g, t, "language_model.model", "language_model.lm_head");
    WeightSource::Memory(g.map)
}

/// Random LLaMA weights for `t` under `model.*` / `lm_head`.
pub fn random_llama(t: &LlamaConfig, seed: u64) -> WeightSource {
    let mut g = Gen { rng: StdRng::seed_from_u64(seed), map: HashMap::new() };
    random_llama_into(&mut g, t, "model", "lm_head");
    WeightSource::Memory(g.map)
}

fn random_llama_into(g: &mut Gen, t: &LlamaConfig, lm: &str, head: &str) {
    let (d, hd) = (t.hidden_size, t.head_dim);
    g.put(format!("{lm}.embed_tokens.weight"), vec![t.vocab_size, d], 1.0, 0.0);
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
