#!/usr/bin/env python3
"""The transformers side of `bench/gpu-bench.sh`, and its report.

  bench_gpu_peer.py transformers --shape 7b|tiny [--device cuda|cpu] [--dtype bf16|f16|f32]
                                 [--layers N] [--vision-layers N] [--reps R] [--new-tokens N]
                                 [--question-tokens N] --json OUT
      LLaVA-1.5 (LlavaForConditionalGeneration, sdpa attention, random weights) of the same
      shape as `htc bench --suite e2e`, timed the same way: the CLIP tower, the projector, the
      576-patch prefix through the LLM, time to the first answer token for a new image and for
      an image whose prefix is already in the KV cache, and decoding with the logits of every
      step read back. Needs torch and transformers (the fixture venv of make_fixtures.py).

  bench_gpu_peer.py report --htc HTC.jsonl [--peer PEER.jsonl] [--gpu-mem NAME=MIB ...]
      Markdown tables of both sides and the ratios (standard library only).

The question and decoded ids are the ones `htc bench` uses (`bench_ids` in
worker/src/bench/mod.rs), with the image token's id moved one up so no question token is
taken for an image token.
"""
import argparse
import json
import sys
import time

IMAGE_TOKEN = 32000

SHAPES = {
    # (vision width, vision layers, LLM width, MLP width, LLM layers, heads, vocab)
    "7b": (1024, 24, 4096, 11008, 32, 32, 32064),
    "tiny": (64, 3, 128, 256, 2, 2, 32064),
}


def bench_ids(n, vocab):
    ids = [100 + (i * 7919) % (vocab - 100) for i in range(n)]
    return [i + 1 if i == IMAGE_TOKEN else i for i in ids]


def transformers_side(a):
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vw, vl, d, inter, layers, heads, vocab = SHAPES[a.shape]
    vl = a.vision_layers or vl
    layers = a.layers or layers
    dtype = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[a.dtype]
    dev = torch.device(a.device)
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=vw, intermediate_size=4 * vw, num_hidden_layers=vl, num_attention_heads=vw // 64,
            image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu",
        ),
        text_config=LlamaConfig(
            vocab_size=vocab, hidden_size=d, intermediate_size=inter, num_hidden_layers=layers,
            num_attention_heads=heads, num_key_value_heads=heads, rms_norm_eps=1e-5,
            max_position_embeddings=4096,
        ),
        image_token_index=IMAGE_TOKEN, vision_feature_layer=-2, vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with dev:
        model = LlavaForConditionalGeneration._from_config(cfg, dtype=dtype, attn_implementation="sdpa")
    model.eval()
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    sync()
    init_s = time.perf_counter() - t0
    inner = model.model
    lm = inner.language_model
    pixels = torch.randn(1, 3, 336, 336, device=dev, dtype=dtype)
    n_patches = (336 // 14) ** 2
    bos = 1
    question = torch.tensor([bench_ids(a.question_tokens, vocab)], device=dev)
    feed = bench_ids(a.new_tokens, vocab)
    prefix_ids = torch.tensor([[bos] + [IMAGE_TOKEN] * n_patches], device=dev)

    def timed(f):
        f()
        sync()
        t = time.perf_counter()
        for _ in range(a.reps):
            f()
            sync()
        return (time.perf_counter() - t) / a.reps

    from transformers import DynamicCache

    with torch.inference_mode():
        def vision():
            out = inner.vision_tower(pixels, output_hidden_states=True)
            return out.hidden_states[-2][:, 1:]

        feats = vision()
        vision_s = timed(vision)
        proj_s = timed(lambda: inner.multi_modal_projector(feats))
        embeds = inner.get_input_embeddings()(prefix_ids.masked_fill(prefix_ids == IMAGE_TOKEN, 0))
        image_embeds = inner.multi_modal_projector(feats)
        embeds = torch.cat([embeds[:, :1], image_embeds], dim=1)
        prefill_s = timed(lambda: lm(inputs_embeds=embeds, use_cache=True))

        full_ids = torch.cat([prefix_ids, question], dim=1)

        def ttft_new():
            out = model(input_ids=full_ids, pixel_values=pixels, use_cache=True, logits_to_keep=1)
            return out.logits[:, -1].float().cpu()

        ttft_new_s = timed(ttft_new)
        cache = DynamicCache(config=cfg.text_config)
        lm(inputs_embeds=embeds, past_key_values=cache, use_cache=True)
        n_prefix = embeds.shape[1]

        def reset():
            # Back to the image's prefix alone (a negative crop drops that many tokens).
            extra = cache.get_seq_length() - n_prefix
            if extra > 0:
                cache.crop(-extra)

        def ttft_cached():
            reset()
            out = model(input_ids=question, past_key_values=cache, use_cache=True, logits_to_keep=1)
            return out.logits[:, -1].float().cpu()

        ttft_cached_s = timed(ttft_cached)
        reset()
        model(input_ids=question, past_key_values=cache, use_cache=True, logits_to_keep=1)
        sync()
        t = time.perf_counter()
        for tok in feed:
            out = model(input_ids=torch.tensor([[tok]], device=dev), past_key_values=cache, use_cache=True)
            out.logits[:, -1].float().cpu()
        sync()
        decode_s = (time.perf_counter() - t) / len(feed)
    if dev.type == "cuda":
        peak = {"peak_gpu_allocated_mib": torch.cuda.max_memory_allocated() / 2**20}
    else:
        import resource

        peak = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    rows = [
        {
            "side": "transformers", "device": str(dev), "dtype": a.dtype, "shape": a.shape, "mode": "none",
            "prefix_tokens": n_prefix, "question_tokens": question.shape[1],
            "vision_ms": vision_s * 1e3, "mgvq_ms": 0.0, "projection_ms": proj_s * 1e3,
            "llm_prefill_ms": prefill_s * 1e3, "ttft_new_ms": ttft_new_s * 1e3,
            "ttft_cached_ms": ttft_cached_s * 1e3, "decode_ms_per_token": decode_s * 1e3,
            "decode_tok_s": 1.0 / decode_s, "new_tokens": len(feed),
        },
        {"side": "transformers", "init_s": init_s, **peak},
    ]
    with open(a.json, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    print(f"transformers {torch.__version__}, {a.dtype} on {dev}: " + json.dumps(rows[0]))


COLS = [
    ("vision_ms", "vision encoder"),
    ("mgvq_ms", "MGVQ encoder"),
    ("projection_ms", "projection"),
    ("llm_prefill_ms", "LLM prefill of the prefix"),
    ("ttft_new_ms", "first token, new image"),
    ("ttft_cached_ms", "first token, cached image"),
    ("decode_ms_per_token", "decode ms/token"),
]


def report(a):
    def load(path):
        rows = [json.loads(l) for l in open(path) if l.strip()]
        modes = {r["mode"]: r for r in rows if "mode" in r}
        extra = {k: v for r in rows if "mode" not in r for k, v in r.items()}
        return modes, extra

    htc, hextra = load(a.htc)
    peer, pextra = load(a.peer) if a.peer else ({}, {})
    names = {"none": "htc, vanilla (576 patches)", "voco": "htc, VoCo-LLaMA (1 token)", "htc": "htc, HTC (1 token)",
             "htc+page": "htc, HTC, codes from the page"}
    shown = [m for m in ("none", "voco", "htc", "htc+page") if m in htc]
    cols = [(k, n) for k, n in COLS]
    head = ["stage (ms)"] + [names[m] for m in shown]
    if "none" in peer:
        head.append("transformers LLaVA-1.5")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for k, label in cols:
        row = [label] + [f"{htc[m][k]:.1f}" for m in shown]
        if "none" in peer:
            row.append(f"{peer['none'][k]:.1f}")
        print("| " + " | ".join(row) + " |")
    print()
    if "none" in peer:
        p = peer["none"]
        print("| ratio (transformers / htc: above 1 means htc is faster) | vanilla | HTC |")
        print("|---|---|---|")
        for k, label in [("ttft_new_ms", "first token, new image"), ("ttft_cached_ms", "first token, cached image"),
                         ("decode_ms_per_token", "decode time per token"), ("vision_ms", "vision encoder"),
                         ("llm_prefill_ms", "LLM prefill of the prefix")]:
            vals = [f"{p[k] / htc[m][k]:.2f}x" if m in htc and htc[m][k] > 0 else "-" for m in ("none", "htc")]
            print(f"| {label} | {vals[0]} | {vals[1]} |")
        print()
    mem = []
    for side, extra in (("htc", hextra), ("transformers", pextra)):
        for k in ("peak_rss_mib", "peak_gpu_allocated_mib"):
            if extra.get(k) is not None:
                mem.append(f"{side} {k.replace('_mib', '').replace('_', ' ')}: {extra[k]:.0f} MiB")
    for m in a.gpu_mem or []:
        name, mib = m.split("=", 1)
        mem.append(f"{name} peak GPU memory used (nvidia-smi): {float(mib):.0f} MiB")
    for line in mem:
        print(f"- {line}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("transformers")
    t.add_argument("--shape", choices=sorted(SHAPES), default="7b")
    t.add_argument("--device", default="cuda")
    t.add_argument("--dtype", choices=["bf16", "f16", "f32"], default="bf16")
    t.add_argument("--layers", type=int)
    t.add_argument("--vision-layers", type=int)
    t.add_argument("--reps", type=int, default=5)
    t.add_argument("--new-tokens", type=int, default=32)
    t.add_argument("--question-tokens", type=int, default=32)
    t.add_argument("--json", required=True)
    r = sub.add_parser("report")
    r.add_argument("--htc", required=True)
    r.add_argument("--peer")
    r.add_argument("--gpu-mem", action="append")
    a = p.parse_args()
    if a.cmd == "transformers":
        transformers_side(a)
    else:
        report(a)


if __name__ == "__main__":
    sys.exit(main())
