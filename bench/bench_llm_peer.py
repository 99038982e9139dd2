#!/usr/bin/env python3
"""The peers of `htc bench --suite llm` (bench/bench-llm.sh): the same prompt ids through
llama.cpp (llama-cpp-python, an F32 GGUF) or HF transformers (f32, eager), timed the same way:
prefill of 128, 512 and 2000 tokens (logits of the last position), then 64 decoding steps of fixed
ids after 128, 512 and 2000 tokens of context (logits of every step). Prints lines in the
format `htc bench` prints, tagged with the peer's name. llama.cpp keeps its key/value cache in
f16 unless told otherwise (`--kv f32`: in f32, as htc and transformers keep theirs).

    bench_llm_peer.py llama.cpp --gguf MODEL-F32.gguf --threads N [--reps R] [--kv f16|f32]
    bench_llm_peer.py transformers --gguf MODEL.gguf --threads N [--reps R]
    bench_llm_peer.py to-f32 --gguf MODEL.gguf --out MODEL-F32.gguf   (llama.cpp's quantizer)
"""
import argparse
import time


def bench_ids(n, vocab):
    # The same walk over the vocabulary as `htc_worker::bench::bench_ids`.
    return [100 + (i * 7919) % (vocab - 100) for i in range(n)]


def timed(reps, f):
    f()
    t = time.perf_counter()
    for _ in range(reps):
        f()
    return (time.perf_counter() - t) / reps


def report(tag, prefill, decode, reps, vocab):
    for n in (128, 512, 2000):
        ids = bench_ids(n, vocab)
        s = timed(reps, lambda: prefill(ids))
        print(f"llm prefill {n} tokens [{tag}]: {s * 1e3:.1f} ms, {n / s:.1f} tok/s", flush=True)
    for ctx in (128, 512, 2000):
        s = decode(bench_ids(ctx, vocab), bench_ids(64, vocab))
        print(f"llm decode at context {ctx} [{tag}]: {s * 1e3:.2f} ms/token, {1 / s:.1f} tok/s", flush=True)


def llama_cpp_side(a):
    import llama_cpp

    # ggml's type ids: 0 is F32, 1 is F16 (llama.cpp's default for the cache).
    kv = {"f16": 1, "f32": 0}[a.kv]
    llm = llama_cpp.Llama(model_path=a.gguf, n_ctx=4096, n_batch=512, n_ubatch=512, n_threads=a.threads,
                          n_threads_batch=a.threads, logits_all=False, verbose=False, type_k=kv, type_v=kv)

    def prefill(ids):
        llm.reset()
        llm.eval(ids)

    def decode(ctx_ids, feed):
        prefill(ctx_ids)
        t = time.perf_counter()
        for i in feed:
            llm.eval([i])
        return (time.perf_counter() - t) / len(feed)

    report("llama.cpp F32" if a.kv == "f16" else "llama.cpp F32, f32 KV cache", prefill, decode, a.reps,
           llm.n_vocab())


def transformers_side(a):
    import os
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(a.threads)
    d, f = os.path.split(os.path.abspath(a.gguf))
    m = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32, attn_implementation="eager")
    m.eval()

    @torch.inference_mode()
    def prefill(ids):
        out = m(torch.tensor([ids]), use_cache=True, logits_to_keep=1)
        return out.past_key_values

    @torch.inference_mode()
    def decode(ctx_ids, feed):
        past = prefill(ctx_ids)
        t = time.perf_counter()
        for i in feed:
            past = m(torch.tensor([[i]]), past_key_values=past, use_cache=True).past_key_values
        return (time.perf_counter() - t) / len(feed)

    report("transformers f32", prefill, decode, a.reps, m.config.vocab_size)


def to_f32(a):
    import llama_cpp

    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = llama_cpp.LLAMA_FTYPE_ALL_F32
    p.allow_requantize = True
    p.nthread = 0
    if llama_cpp.llama_model_quantize(a.gguf.encode(), a.out.encode(), p) != 0:
        raise SystemExit(f"llama.cpp could not convert {a.gguf} to F32")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("peer", choices=["llama.cpp", "transformers", "to-f32"])
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--out")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--kv", choices=["f16", "f32"], default="f16", help="llama.cpp's key/value cache type")
    a = ap.parse_args()
    {"llama.cpp": llama_cpp_side, "transformers": transformers_side, "to-f32": to_f32}[a.peer](a)


if __name__ == "__main__":
    main()
