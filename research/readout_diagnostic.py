#!/usr/bin/env python3
"""How fast does the demo model's LLM, trained from nothing, learn to answer ShapesVQA
questions when it is handed the scene directly? A PyTorch/transformers reference for the
limit the model card describes (models/shapes-demo/README.md, "The readout, measured apart"):
the same LLaMA (hidden 192, 4 layers, 6 heads of 32, intermediate 512; `--hidden` and
`--intermediate` widen it), AdamW, warmup + cosine,
global-norm clipping at 1, answer tokens scored, a fresh procedural scene per example
(ShapesVQA v1's objects and questions; no pictures).

    --input words   the scene written in words before the question, as a description
                    ("large red solid star top left ; ..."): no vision, no bottleneck;
    --input vector  the scene as ONE input vector at the <voco> position, a learnt linear map
                    of its table (each colour-shape pair: absent, or its size, texture, row
                    and column): what a perfect <voco> token could carry.

`--then-vector N` continues a words run for N steps with the vector input: an LLM that has
learnt to answer from the scene in words, then made to read it from one token. Prints test
accuracy per question family every 250 steps, on 700 held-out scenes.

    .venv-fixtures/bin/python research/readout_diagnostic.py --input vector --steps 3000

The venv is the one fixtures/make_fixtures.py uses (torch, transformers).
"""
import argparse
import math
import random
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

SHAPES = ["circle", "square", "triangle", "star"]
COLORS = ["red", "green", "blue", "yellow", "purple", "orange"]
TEXTURES = ["solid", "striped", "outline"]
ROWS = ["top", "center", "bottom"]
COLUMNS = ["left", "middle", "right"]
PAIRS = [(c, s) for c in COLORS for s in SHAPES]


def scene(r):
    n = r.randint(1, 4)
    cells = r.sample(range(9), n)
    pairs = r.sample(PAIRS, n)
    return [
        dict(cell=cell, color=c, shape=s, size=r.choice(["small", "large"]), texture=r.choice(TEXTURES))
        for cell, (c, s) in zip(cells, pairs)
    ]


def describe(objs):
    return " ; ".join(
        f"{o['size']} {o['color']} {o['texture']} {o['shape']} {ROWS[o['cell'] // 3]} {COLUMNS[o['cell'] % 3]}"
        for o in sorted(objs, key=lambda o: o["cell"])
    )


def question(r, objs):
    """(family, question, answer), the family drawn uniformly among those the scene allows."""
    while True:
        f = r.choice(["shape", "color", "exist", "count", "texture", "size", "position"])
        if f == "shape":
            unique = [o for o in objs if [p["color"] for p in objs].count(o["color"]) == 1]
            if unique:
                o = r.choice(unique)
                return f, f"What shape is the {o['color']} object?", o["shape"]
        elif f == "color":
            unique = [o for o in objs if [p["shape"] for p in objs].count(o["shape"]) == 1]
            if unique:
                o = r.choice(unique)
                return f, f"What color is the {o['shape']}?", o["color"]
        elif f == "exist":
            if r.random() < 0.5:
                o = r.choice(objs)
                return f, f"Is there a {o['color']} {o['shape']}?", "yes"
            have = {(o["color"], o["shape"]) for o in objs}
            c, s = r.choice([p for p in PAIRS if p not in have])
            return f, f"Is there a {c} {s}?", "no"
        elif f == "count":
            s = r.choice(SHAPES)
            return f, f"How many {s}s are there?", str(sum(o["shape"] == s for o in objs))
        else:
            o = r.choice(objs)
            name = f"{o['color']} {o['shape']}"
            if f == "texture":
                return f, f"What is the texture of the {name}?", o["texture"]
            if f == "size":
                return f, f"Is the {name} small or large?", o["size"]
            return f, f"Is the {name} on the left, in the middle, or on the right?", COLUMNS[o["cell"] % 3]


def table(objs):
    """The scene's table, one-hot per colour-shape pair: [absent, size×2, absent, texture×3,
    absent, row×3, absent, column×3]."""
    v = torch.zeros(len(PAIRS), 15)
    at = {(o["color"], o["shape"]): o for o in objs}
    for i, p in enumerate(PAIRS):
        o = at.get(p)
        if o is None:
            v[i, [0, 3, 7, 11]] = 1
        else:
            v[i, 1 + ["small", "large"].index(o["size"])] = 1
            v[i, 4 + TEXTURES.index(o["texture"])] = 1
            v[i, 8 + o["cell"] // 3] = 1
            v[i, 12 + o["cell"] % 3] = 1
    return v.flatten()


class Words:
    def __init__(self):
        words = set("USER: ASSISTANT: ; 0 1 2 3 4 yes no small large".split())
        r = random.Random(0)
        for _ in range(3000):
            objs = scene(r)
            words.update(describe(objs).split())
            words.update(question(r, objs)[1].split())
        self.ids = {w: i + 3 for i, w in enumerate(sorted(words))}  # 0 pad, 1 BOS, 2 EOS

    def __call__(self, text):
        return [self.ids[w] for w in text.split()]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", choices=["words", "vector"], required=True)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hidden", type=int, default=192, help="the LLM's width (heads of 32)")
    ap.add_argument("--intermediate", type=int, default=512, help="the LLM's MLP width")
    ap.add_argument("--named-loss", type=float, default=0.0,
                    help="weight of a training-only probe: linear heads on the last prompt token's state at the"
                    " input of layer --named-layer name the colour and the shape the question names")
    ap.add_argument("--named-layer", type=int, default=1)
    ap.add_argument("--then-vector", type=int, default=0,
                    help="after --input words, train this many steps more with --input vector (a fresh optimiser)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    tok = Words()
    cfg = LlamaConfig(
        vocab_size=len(tok.ids) + 3, hidden_size=a.hidden, intermediate_size=a.intermediate, num_hidden_layers=4,
        num_attention_heads=a.hidden // 32, num_key_value_heads=a.hidden // 32, head_dim=32, max_position_embeddings=512,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg)
    to_voco = torch.nn.Linear(len(PAIRS) * 15, a.hidden)
    embed = model.get_input_embeddings()
    phase = {"vector": a.input == "vector"}

    def examples(r, n):
        out = []
        for _ in range(n):
            objs = scene(r)
            family, q, answer = question(r, objs)
            prompt = "USER: " + q + " ASSISTANT:"
            if not phase["vector"]:
                prompt = "USER: " + describe(objs) + " " + q + " ASSISTANT:"
            named = (next((i + 1 for i, c in enumerate(COLORS) if c in q.split()), 0),
                     next((i + 1 for i, x in enumerate(SHAPES) if x in q.replace("?", "").replace("s are", " are").split()), 0))
            out.append((table(objs), tok(prompt), tok(answer) + [2], family, named))
        return out

    def inputs(batch, with_answer):
        """Right-padded embeddings [BOS, (scene vector), prompt, (answer)], mask and labels."""
        prefix = 2 if phase["vector"] else 1
        n = max(len(p) + (len(ans) if with_answer else 0) for _, p, ans, _, _ in batch)
        ids = torch.zeros(len(batch), n, dtype=torch.long)
        mask = torch.zeros(len(batch), prefix + n, dtype=torch.long)
        labels = torch.full((len(batch), prefix + n), -100)
        for i, (_, p, ans, _, _) in enumerate(batch):
            s = p + (ans if with_answer else [])
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : prefix + len(s)] = 1
            if with_answer:
                for j, t in enumerate(ans):
                    labels[i, prefix + len(p) + j - 1] = t
        parts = [embed(torch.ones(len(batch), 1, dtype=torch.long))]
        if phase["vector"]:
            parts.append(to_voco(torch.stack([v for v, _, _, _, _ in batch])).unsqueeze(1))
        parts.append(embed(ids))
        return torch.cat(parts, 1), mask, labels, prefix

    def evaluate():
        test = examples(random.Random(10_000 + a.seed), 700)
        model.eval()
        tally = {}
        with torch.no_grad():
            for k in range(0, len(test), 100):
                chunk = test[k : k + 100]
                e, mask, _, prefix = inputs(chunk, False)
                logits = model(inputs_embeds=e, attention_mask=mask).logits
                for i, (_, p, ans, family, _) in enumerate(chunk):
                    t = tally.setdefault(family, [0, 0])
                    t[0] += int(logits[i, prefix + len(p) - 1].argmax().item() == ans[0])
                    t[1] += 1
        model.train()
        overall = sum(t[0] for t in tally.values()) / sum(t[1] for t in tally.values())
        return overall, {f: t[0] / t[1] for f, t in sorted(tally.items())}

    named_heads = torch.nn.ModuleList([torch.nn.Linear(a.hidden, len(COLORS) + 1), torch.nn.Linear(a.hidden, len(SHAPES) + 1)])

    def train(steps, seed):
        """`steps` steps with a fresh optimiser and schedule, in the current phase's input."""
        params = list(model.parameters()) + (list(to_voco.parameters()) if phase["vector"] else [])
        if a.named_loss > 0:
            params += list(named_heads.parameters())
        opt = torch.optim.AdamW(params, lr=a.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
        warmup = 30
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
        )
        r = random.Random(seed)
        start = time.time()
        print(f"input {'vector' if phase['vector'] else 'words'}: {steps} steps of {a.batch}, lr {a.lr}")
        for step in range(1, steps + 1):
            batch = examples(r, a.batch)
            e, mask, labels, prefix = inputs(batch, True)
            out = model(inputs_embeds=e, attention_mask=mask, output_hidden_states=a.named_loss > 0)
            logits = out.logits
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
            if a.named_loss > 0:
                last = torch.tensor([prefix + len(p) - 1 for _, p, _, _, _ in batch])
                state = out.hidden_states[a.named_layer][torch.arange(len(batch)), last]
                for k, head in enumerate(named_heads):
                    target = torch.tensor([n[k] for _, _, _, _, n in batch])
                    loss = loss + a.named_loss * torch.nn.functional.cross_entropy(head(state), target)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            if step % 250 == 0:
                overall, families = evaluate()
                per = " ".join(f"{f} {v:.0%}" for f, v in families.items())
                print(f"step {step:5}  loss {loss.item():.3f}  test {overall:.1%}  ({per})  {time.time() - start:.0f} s", flush=True)

    train(a.steps, a.seed)
    if a.then_vector:
        # The LLM that learnt to answer from the scene in words now reads it from one vector.
        phase["vector"] = True
        train(a.then_vector, a.seed + 1)


if __name__ == "__main__":
    main()
