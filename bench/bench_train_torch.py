#!/usr/bin/env python3
"""PyTorch peer of `htc bench --suite train`: the same HTC model shapes, batch and step
(forward, backward, clip_grad_norm_, AdamW with two decay groups), timed the same way
(2 warm-up steps, then the mean of N), on CPU with a fixed thread count.

    .venv-fixtures/bin/python bench/bench_train_torch.py --shape mid --steps 10 --threads 2
"""
import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fixtures"))
from make_train_fixtures import HtcRef, no_decay  # noqa: E402

# Must match worker/src/bench/train.rs.
SHAPES = {
    "tiny": dict(clip=(32, 3, 16, 4), llm=(128, 64, 2, 4, 2, 96), discrete_hidden=48, batch=8, text=24),
    "mid": dict(clip=(64, 2, 336, 14), llm=(4096, 512, 8, 8, 8, 1376), discrete_hidden=512, batch=4, text=48),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="tiny", choices=SHAPES)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    s = SHAPES[a.shape]
    torch.manual_seed(0)
    model = HtcRef(clip=s["clip"], llm=s["llm"], discrete_hidden=s["discrete_hidden"])
    trainable = model.trainable()
    opt = torch.optim.AdamW([
        {"params": [p for k, p in trainable if not no_decay(k, p)], "weight_decay": 0.1},
        {"params": [p for k, p in trainable if no_decay(k, p)], "weight_decay": 0.0},
    ], lr=1e-4, betas=(0.9, 0.999), eps=1e-8)
    B, T, size, vocab = s["batch"], s["text"], s["clip"][2], s["llm"][0]
    clip_px = torch.randn(B, 3, size, size)
    mgvq_px = torch.rand(B, 3, 64, 64) * 2 - 1
    ids = torch.randint(3, vocab, (B, T))
    labels = ids.clone()
    labels[:, : T - 16] = -100
    seq = 1 + 4 + model.n_visual + 1 + T

    def step():
        opt.zero_grad(set_to_none=True)
        nll, count = model.loss(clip_px, mgvq_px, ids, labels)
        loss = nll / count
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in trainable], 1.0)
        opt.step()
        return float(loss.detach())

    for _ in range(2):
        step()
    t = time.perf_counter()
    for _ in range(a.steps):
        loss = step()
    dt = (time.perf_counter() - t) / a.steps
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"train {a.shape} [torch {torch.__version__}, {a.threads} threads]: batch {B} x {seq} tokens, "
          f"{dt * 1e3:.1f} ms/step, {B / dt:.2f} samples/s, {B * seq / dt:.0f} tokens/s, "
          f"peak RSS {peak:.0f} MiB, loss {loss:.3f}")


if __name__ == "__main__":
    main()
