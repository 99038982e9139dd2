#!/usr/bin/env python3
"""Generate the training reference fixture `fixtures/htc-train-tiny/` with PyTorch.

Same pinned stack as scripts/make_fixtures.py (run it from the same venv):

    .venv-fixtures/bin/python scripts/make_train_fixtures.py

A tiny HTC model (mode `htc`, star mask, 4 anchors, one `<voco>`) is written as a checkpoint
directory the worker loads as is (llava-hf hub layout plus `htc.*` / `mgvq.*`), and a reference
PyTorch implementation of the same model trains it on one fixed batch:

- the batch: 3 records, right-padded, one of them multi-turn (two answer spans); labels are the
  answer tokens plus the closing EOS, -100 elsewhere;
- the loss: next-token cross-entropy summed over answer tokens, divided by their count;
- gradients of every trainable tensor (`<voco>`, P_v, P_d, the LLM); CLIP and MGVQ frozen;
- 3 steps of torch.optim.AdamW with two parameter groups (no decay on tensors with fewer than
  two dimensions and on embeddings), `clip_grad_norm_`, and transformers'
  `get_cosine_schedule_with_warmup`;
- the schedule's multipliers over a longer run, straight from transformers;
- LoRA (rank 4, alpha 8, on q/v of every layer, the LLM frozen): the loss and the gradients
  of the adapters and of `<voco>`, P_v, P_d.

It also writes a word-level `tokenizer.json` for the model and `fixtures/colors/`, a tiny
LLaVA-format data set (which colour is the image?) for the README example and the learning test.

The mask is built here from the paper's definition (Sec. 3.3), independently of the Rust code.
"""
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import (
    CLIPVisionConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    get_cosine_schedule_with_warmup,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_fixtures import (  # noqa: E402
    FIX, contiguous, llama_config, llava_hub_config, mgvq_config_tiny, mgvq_encode, mgvq_state_dict,
    unit_scale_,
)

OUT = FIX / "htc-train-tiny"
N_DISCRETE, N_VOCO, DISCRETE_HIDDEN = 4, 1, 48
VOCAB, D = 128, 64
LR, WD, BETAS, EPS, MAX_NORM = 1e-2, 0.1, (0.9, 0.999), 1e-8, 0.5
WARMUP, TOTAL, STEPS = 2, 4, 3


def hub_key(k: str) -> str:
    """transformers-5 LLaVA parameter name -> llava-hf hub checkpoint key."""
    if k.startswith("model.vision_tower."):
        rest = k[len("model.vision_tower."):]
        return "vision_tower." + (rest if rest.startswith("vision_model.") else "vision_model." + rest)
    if k.startswith("model.multi_modal_projector."):
        return k[len("model."):]
    if k.startswith("model.language_model."):
        return "language_model.model." + k[len("model.language_model."):]
    if k.startswith("lm_head."):
        return "language_model." + k
    raise SystemExit(f"unexpected llava key {k}")


def star_mask(n_text: int, n_visual: int = 16) -> torch.Tensor:
    """Additive [L, L] mask for [BOS][v_d x 4][V x n_visual][voco][text], star topology: visual
    tokens see only themselves, <voco> sees everything before it, text sees BOS, <voco> and
    earlier text."""
    roles = ["bos"] + ["vis"] * (N_DISCRETE + n_visual) + ["voco"] * N_VOCO + ["text"] * n_text
    L = len(roles)
    m = torch.full((L, L), torch.finfo(torch.float32).min)
    for q, rq in enumerate(roles):
        for k, rk in enumerate(roles):
            if rq == "bos" or rq == "vis":
                ok = k == q
            elif rq == "voco":
                ok = k <= q
            else:
                ok = k <= q and rk in ("bos", "voco", "text")
            if ok:
                m[q, k] = 0.0
    return m


class HtcRef(torch.nn.Module):
    """The HTC model in PyTorch. The defaults are the fixture's shape; `scripts/bench_train_torch.py`
    builds larger ones: clip = (width, layers, image size, patch), llm = (vocab, width, layers,
    heads, kv heads, MLP width)."""

    def __init__(self, clip=(32, 3, 16, 4), llm=(VOCAB, D, 2, 4, 2, 96), discrete_hidden=DISCRETE_HIDDEN):
        super().__init__()
        cw, cl, size, patch = clip
        vocab, d, layers, heads, kv, inter = llm
        self.vocab, self.d, self.n_visual = vocab, d, (size // patch) ** 2
        vcfg = CLIPVisionConfig(
            hidden_size=cw, intermediate_size=2 * cw, num_hidden_layers=cl, num_attention_heads=4,
            image_size=size, patch_size=patch, projection_dim=cw, hidden_act="quick_gelu", layer_norm_eps=1e-5,
        )
        tcfg = llama_config(vocab_size=vocab, hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads,
                            num_key_value_heads=kv, intermediate_size=inter,
                            max_position_embeddings=4096 if size > 16 else 256)
        cfg = LlavaConfig(
            vision_config=vcfg, text_config=tcfg, image_token_index=vocab - 1 if vocab != VOCAB else 120,
            projector_hidden_act="gelu", vision_feature_layer=-2,
            vision_feature_select_strategy="default", image_seq_length=self.n_visual,
        )
        cfg._attn_implementation = "eager"
        self.llava = LlavaForConditionalGeneration(cfg)
        unit_scale_(self.llava, 21)
        g = torch.Generator().manual_seed(22)
        self.mcfg = mgvq_config_tiny()
        self.mgvq_sd = mgvq_state_dict(self.mcfg, g)
        q_len = self.mcfg["latent_channels"] * (self.mcfg["image_size"] // 16) ** 2
        self.pd1 = torch.nn.Linear(q_len, discrete_hidden)
        self.pd2 = torch.nn.Linear(discrete_hidden, N_DISCRETE * d)
        with torch.no_grad():
            for lin in (self.pd1, self.pd2):
                lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) / math.sqrt(lin.in_features))
                lin.bias.copy_(0.2 * torch.randn(lin.bias.shape, generator=g))
        self.voco = torch.nn.Parameter(torch.randn(N_VOCO, d, generator=g))
        for p in self.llava.model.vision_tower.parameters():
            p.requires_grad_(False)

    def checkpoint(self):
        sd = {hub_key(k): v for k, v in contiguous(self.llava.state_dict()).items()}
        sd["htc.discrete_projector.linear_1.weight"] = self.pd1.weight
        sd["htc.discrete_projector.linear_1.bias"] = self.pd1.bias
        sd["htc.discrete_projector.linear_2.weight"] = self.pd2.weight
        sd["htc.discrete_projector.linear_2.bias"] = self.pd2.bias
        sd["htc.voco_embeddings"] = self.voco
        for k, v in self.mgvq_sd.items():
            sd["mgvq." + k] = v
        return {k: v.detach().contiguous().clone() for k, v in sd.items()}

    def trainable(self):
        """(checkpoint key, parameter) for every trainable tensor."""
        out = [(hub_key(k), p) for k, p in self.llava.named_parameters() if p.requires_grad]
        out += [
            ("htc.discrete_projector.linear_1.weight", self.pd1.weight),
            ("htc.discrete_projector.linear_1.bias", self.pd1.bias),
            ("htc.discrete_projector.linear_2.weight", self.pd2.weight),
            ("htc.discrete_projector.linear_2.bias", self.pd2.bias),
            ("htc.voco_embeddings", self.voco),
        ]
        return out

    def loss(self, clip_px, mgvq_px, ids, labels):
        """Sum of answer-token NLL and the answer-token count."""
        m = self.llava.model
        b, t = ids.shape
        with torch.no_grad():
            feats = m.vision_tower(clip_px, output_hidden_states=True).hidden_states[-2][:, 1:]
            q = mgvq_encode(self.mcfg, self.mgvq_sd, mgvq_px)[1]
        V = m.multi_modal_projector(feats)
        vd = F.gelu(self.pd2(F.gelu(self.pd1(q.reshape(b, -1))))).reshape(b, N_DISCRETE, self.d)
        emb = m.language_model.embed_tokens
        bos = emb(torch.ones(b, 1, dtype=torch.long))
        x = torch.cat([bos, vd, V, self.voco[None].expand(b, -1, -1), emb(ids)], 1)
        L = x.shape[1]
        mask = star_mask(t, self.n_visual)[None, None].expand(b, 1, L, L)
        h = m.language_model(inputs_embeds=x, attention_mask=mask,
                             position_ids=torch.arange(L)[None].expand(b, -1)).last_hidden_state
        logits = self.llava.lm_head(h)
        full = torch.cat([torch.full((b, L - t), -100), labels], 1)
        nll = F.cross_entropy(logits[:, :-1].reshape(-1, self.vocab), full[:, 1:].reshape(-1),
                              ignore_index=-100, reduction="sum")
        return nll, int((labels != -100).sum())


def make_batch(g):
    """3 right-padded records: (ids, labels) with answer spans ending in EOS (2)."""
    def tok(n):
        return torch.randint(3, VOCAB, (n,), generator=g).tolist()

    rows = []
    # multi-turn: system+question, answer, question, answer
    ids, lab = [], []
    for kind, n in [("p", 6), ("a", 3), ("p", 4), ("a", 2)]:
        span = tok(n) + ([2] if kind == "a" else [])
        ids += span
        lab += span if kind == "a" else [-100] * len(span)
    rows.append((ids, lab))
    for n_p, n_a in [(5, 1), (4, 5)]:
        p, a = tok(n_p), tok(n_a) + [2]
        rows.append((p + a, [-100] * n_p + a))
    T = max(len(r[0]) for r in rows)
    ids = torch.tensor([r[0] + [0] * (T - len(r[0])) for r in rows])
    labels = torch.tensor([r[1] + [-100] * (T - len(r[1])) for r in rows])
    lengths = torch.tensor([len(r[0]) for r in rows])
    return ids, labels, lengths


WORDS = ["<unk>", "<s>", "</s>", "USER:", "ASSISTANT:", "What", "color", "is", "it?", "red", "green", "blue"]
COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def tokenizer_json():
    """A word-level tokenizer (split on whitespace) for the colour task; other words are <unk>."""
    special = lambda i, w: {"id": i, "content": w, "single_word": False, "lstrip": False,
                            "rstrip": False, "normalized": False, "special": True}
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [special(1, "<s>"), special(2, "</s>")],
        "normalizer": None, "pre_tokenizer": {"type": "WhitespaceSplit"}, "post_processor": None,
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": {w: i for i, w in enumerate(WORDS)}, "unk_token": "<unk>"},
    }


def colors_fixture():
    """fixtures/colors: noisy solid-colour 32x32 images and LLaVA conversation records asking
    their colour (4 training and 1 validation image per colour)."""
    from PIL import Image
    out = FIX / "colors"
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(31)
    train, val = [], []
    for name, rgb in COLORS.items():
        for k in range(5):
            px = np.clip(np.array(rgb)[None, None] + rng.integers(0, 32, (32, 32, 3)), 0, 255).astype(np.uint8)
            file = f"{name}-{k}.png"
            Image.fromarray(px).save(out / "images" / file)
            rec = {"id": f"{name}-{k}", "image": file, "conversations": [
                {"from": "human", "value": "<image>\nWhat color is it?"}, {"from": "gpt", "value": name}]}
            (val if k == 4 else train).append(rec)
    (out / "train.json").write_text(json.dumps(train, indent=1))
    (out / "val.json").write_text(json.dumps(val, indent=1))


LORA_RANK, LORA_ALPHA, LORA_TARGETS = 4, 8, ("q_proj", "v_proj")


class LoraLinear(torch.nn.Module):
    """W x + (alpha / r) B A x with W frozen (PEFT's formula; A [r, in], B [out, r])."""

    def __init__(self, base, g):
        super().__init__()
        self.base = base
        self.A = torch.nn.Parameter(torch.randn(LORA_RANK, base.in_features, generator=g) / math.sqrt(base.in_features))
        # Non-zero B (a fresh adapter has B = 0) so that A gets a gradient too.
        self.B = torch.nn.Parameter(0.3 * torch.randn(base.out_features, LORA_RANK, generator=g))

    def forward(self, x):
        return self.base(x) + (LORA_ALPHA / LORA_RANK) * (x @ self.A.T @ self.B.T)


def lora_reference(clip_px, mgvq_px, ids, labels, out):
    """A fresh copy of the model with LoRA on q/v of every layer, the LLM's own weights frozen:
    the loss and the gradients of the adapters and of <voco>, P_v, P_d."""
    model = HtcRef()
    g = torch.Generator().manual_seed(41)
    for p in model.llava.model.language_model.parameters():
        p.requires_grad_(False)
    model.llava.lm_head.weight.requires_grad_(False)
    adapters = []
    for i, layer in enumerate(model.llava.model.language_model.layers):
        for t in LORA_TARGETS:
            lora = LoraLinear(getattr(layer.self_attn, t), g)
            setattr(layer.self_attn, t, lora)
            key = f"language_model.model.layers.{i}.self_attn.{t}"
            adapters += [(f"{key}.lora_A.weight", lora.A), (f"{key}.lora_B.weight", lora.B)]
    for k, p in adapters:
        out[f"lora.init.{k}"] = p.detach().clone()
    nll, count = model.loss(clip_px, mgvq_px, ids, labels)
    loss = nll / count
    loss.backward()
    out["lora.loss"] = loss.detach().reshape(1)
    trained = adapters + [(k, p) for k, p in model.trainable() if p.requires_grad and "language_model" not in k]
    for k, p in trained:
        out[f"lora.grad.{k}"] = p.grad.detach().clone()
    print(f"lora: loss {float(loss.detach()):.6f}, {len(trained)} trained tensors")


def no_decay(key, p):
    return p.ndim < 2 or "embed" in key


def main():
    torch.manual_seed(0)
    OUT.mkdir(parents=True, exist_ok=True)
    model = HtcRef()
    g = torch.Generator().manual_seed(23)
    clip_px = torch.randn(3, 3, 16, 16, generator=g)
    mgvq_px = torch.rand(3, 3, 64, 64, generator=g) * 2 - 1
    with torch.no_grad():
        _, _, _, gap = mgvq_encode(model.mcfg, model.mgvq_sd, mgvq_px)
    assert gap > 1e-4, f"MGVQ codes too close to a tie ({gap})"
    ids, labels, lengths = make_batch(g)

    save_file(model.checkpoint(), OUT / "model.safetensors", metadata={"format": "pt"})
    (OUT / "tokenizer.json").write_text(json.dumps(tokenizer_json()))
    colors_fixture()
    config = llava_hub_config()
    config["text_config"].update({"bos_token_id": 1, "eos_token_id": 2})
    (OUT / "config.json").write_text(json.dumps({
        **config,
        "htc": {
            "mode": "htc", "n_discrete": N_DISCRETE, "n_voco": N_VOCO, "topology": "star",
            "continuous_projector": "mlp2x_gelu", "discrete_hidden": DISCRETE_HIDDEN,
            "mgvq": model.mcfg,
        },
    }, indent=2))

    out = {
        "batch.clip": clip_px, "batch.mgvq": mgvq_px, "batch.ids": ids, "batch.labels": labels,
        "batch.lengths": lengths,
    }
    trainable = model.trainable()
    nll, count = model.loss(clip_px, mgvq_px, ids, labels)
    loss = nll / count
    loss.backward()
    out["loss"] = loss.detach().reshape(1)
    out["count"] = torch.tensor([count])
    for k, p in trainable:
        assert p.grad is not None, k
        out[f"grad.{k}"] = p.grad.detach().clone()
    for k, p in model.llava.model.vision_tower.named_parameters():
        assert p.grad is None

    # Three AdamW steps on the same batch.
    groups = [
        {"params": [p for k, p in trainable if not no_decay(k, p)], "weight_decay": WD},
        {"params": [p for k, p in trainable if no_decay(k, p)], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=LR, betas=BETAS, eps=EPS, foreach=False)
    sched = get_cosine_schedule_with_warmup(opt, WARMUP, TOTAL)
    lrs, norms, losses = [], [], []
    for step in range(STEPS):
        opt.zero_grad()
        nll, count = model.loss(clip_px, mgvq_px, ids, labels)
        (nll / count).backward()
        losses.append(float(nll.detach() / count))
        norms.append(float(torch.nn.utils.clip_grad_norm_([p for _, p in trainable], MAX_NORM)))
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert norms[0] > MAX_NORM, f"the first step must clip ({norms[0]})"
    out["steps.lr"] = torch.tensor(lrs, dtype=torch.float64)
    out["steps.grad_norm"] = torch.tensor(norms, dtype=torch.float64)
    out["steps.loss"] = torch.tensor(losses, dtype=torch.float64)
    for k, p in trainable:
        out[f"after.{k}"] = p.detach().clone()

    lora_reference(clip_px, mgvq_px, ids, labels, out)

    # The schedule over a longer run, from transformers itself.
    dummy = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    s = get_cosine_schedule_with_warmup(dummy, 3, 20)
    mult = []
    for _ in range(20):
        mult.append(dummy.param_groups[0]["lr"])
        dummy.step()
        s.step()
    out["schedule.warmup3_total20"] = torch.tensor(mult, dtype=torch.float64)

    save_file({k: v.contiguous() for k, v in out.items()}, OUT / "expected.safetensors")
    print(f"htc-train-tiny: loss {float(loss):.6f} over {count} answer tokens; "
          f"lrs {lrs}; grad norms {[round(n, 4) for n in norms]}; losses {[round(x, 4) for x in losses]}")


if __name__ == "__main__":
    main()
