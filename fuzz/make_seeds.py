"""Writes the fuzz targets' seed corpora (fuzz/corpus/<target>/): small valid inputs of every
kind each target reads, built here byte by byte with the standard library (no other package),
plus the project's own config fixtures. Run from the repository root:

    python3 fuzz/make_seeds.py
"""

import json
import shutil
import struct
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"


def put(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())


# --- images -----------------------------------------------------------------------------------
def png(w, h, color_type=2):
    channels = {0: 1, 2: 3, 6: 4}[color_type]
    raw = b"".join(b"\x00" + bytes((x * 40 + y * 7 + c * 90) % 256 for x in range(w) for c in range(channels)) for y in range(h))

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def bmp(w, h):
    row = (w * 3 + 3) // 4 * 4
    pixels = b"".join(
        bytes(v for x in range(w) for v in (x * 50 % 256, y * 60 % 256, 128)).ljust(row, b"\x00") for y in range(h)
    )
    header = struct.pack("<2sIHHI", b"BM", 54 + len(pixels), 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, len(pixels), 2835, 2835, 0, 0)
    return header + info + pixels


GIF_1X1 = bytes.fromhex("47494638396101000100800000ffffff00000021f90401000000002c00000000010001000002024401003b")

put("image", "rgb-8x6.png", png(8, 6))
put("image", "gray-5x5.png", png(5, 5, 0))
put("image", "rgba-3x4.png", png(3, 4, 6))
put("image", "rgb-4x3.bmp", bmp(4, 3))
put("image", "1x1.gif", GIF_1X1)

# --- protocol ---------------------------------------------------------------------------------
for name, msg in {
    "hello": {"type": "hello", "version": 1, "capabilities": ["attention-f16"]},
    "image": {"type": "image", "request_id": 1, "image_id": "a", "byte_len": 120},
    "image-codes": {"type": "image", "request_id": 2, "image_id": "b", "byte_len": 120, "codes": {"positions": 4, "groups": 2}},
    "ask": {"type": "ask", "request_id": 3, "image_id": "a", "question": "What color is the star?", "max_new_tokens": 8},
    "ask-ids": {"type": "ask", "request_id": 4, "image_id": "a", "prompt_ids": [5, 6, 7], "temperature": 0.7, "top_p": 0.9, "mode": "none"},
    "cancel": {"type": "cancel", "request_id": 3},
}.items():
    put("protocol", name + ".json", json.dumps(msg))
put("protocol", "image-frame.bin", bytes([1]) + struct.pack("<I", 1) + png(2, 2))
put("protocol", "codes-frame.bin", bytes([2]) + struct.pack("<I", 2) + bytes([4, 2]) + struct.pack("<8H", *range(8)))
att = struct.pack("<HHH", 1, 2, 2) + b"".join(struct.pack("<e", v) for v in (0.1, 0.2, 0.3, 0.4))
put("protocol", "attention-frame.bin", bytes([3]) + struct.pack("<I", 3) + att)

# --- config.json ------------------------------------------------------------------------------
(CORPUS / "config").mkdir(parents=True, exist_ok=True)
for d in ["clip-tiny", "htc-train-tiny", "llama-tiny", "llava-hf-tiny", "llava-liuhaotian-tiny", "mgvq-tiny"]:
    shutil.copy(ROOT / "fixtures" / d / "config.json", CORPUS / "config" / f"{d}.json")
shutil.copy(ROOT / "models" / "shapes-demo" / "config.json", CORPUS / "config" / "shapes-demo.json")


# --- safetensors ------------------------------------------------------------------------------
def safetensors(tensors):
    header, data = {}, b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


put("safetensors", "mixed.safetensors", safetensors({
    "a.weight": ("F32", [2, 3], struct.pack("<6f", *range(6))),
    "b.weight": ("F16", [4], struct.pack("<4e", 0.5, -1.0, 2.0, 65504.0)),
    "c.weight": ("BF16", [2], struct.pack("<2H", 0x3F80, 0xC000)),
}))
put("safetensors", "int.safetensors", safetensors({"ids": ("I64", [3], struct.pack("<3q", 1, 2, 3))}))


# --- GGUF -------------------------------------------------------------------------------------
def gstr(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def kv(key, ty, value):
    if ty == 4:
        v = struct.pack("<I", value)
    elif ty == 6:
        v = struct.pack("<f", value)
    elif ty == 8:
        v = gstr(value)
    elif ty == 9:
        ity, items = value
        v = struct.pack("<IQ", ity, len(items)) + b"".join(gstr(i) if ity == 8 else struct.pack("<i", i) for i in items)
    return gstr(key) + struct.pack("<I", ty) + v


def gguf(meta, tensors):
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(meta)) + b"".join(meta)
    data, infos = b"", b""
    for name, dims, ty, raw in tensors:
        infos += gstr(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        infos += struct.pack("<IQ", ty, len(data))
        data += raw + b"\x00" * (-len(raw) % 32)
    out += infos
    out += b"\x00" * (-len(out) % 32)
    return out + data


tokens = ["<s>", "</s>", "a", "b", "\u0120a", "ab"]
meta = [
    kv("general.architecture", 8, "llama"),
    kv("llama.embedding_length", 4, 8),
    kv("llama.feed_forward_length", 4, 16),
    kv("llama.block_count", 4, 1),
    kv("llama.attention.head_count", 4, 2),
    kv("llama.attention.head_count_kv", 4, 1),
    kv("llama.context_length", 4, 64),
    kv("llama.attention.layer_norm_rms_epsilon", 6, 1e-5),
    kv("tokenizer.ggml.model", 8, "gpt2"),
    kv("tokenizer.ggml.tokens", 9, (8, tokens)),
    kv("tokenizer.ggml.token_type", 9, (5, [3, 3, 1, 1, 1, 1])),
    kv("tokenizer.ggml.merges", 9, (8, ["a b"])),
    kv("tokenizer.ggml.bos_token_id", 4, 0),
    kv("tokenizer.ggml.eos_token_id", 4, 1),
    kv("tokenizer.chat_template", 8, "{% for m in messages %}{{ m['content'] }}{% endfor %}"),
]
q8 = struct.pack("<e", 0.05) + bytes(range(32))
put("gguf", "tiny-llama.gguf", gguf(meta, [
    ("token_embd.weight", [8, 6], 0, struct.pack("<48f", *[i / 48 for i in range(48)])),
    ("output_norm.weight", [8], 1, struct.pack("<8e", *[1.0] * 8)),
    ("blk.0.attn_q.weight", [32, 1], 8, q8),
]))
print("seeds written to", CORPUS)
