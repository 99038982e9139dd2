#!/usr/bin/env python3
"""Convert an official MGVQ checkpoint (.pt, a torch pickle) to safetensors for HTC-VLM.

    python3 scripts/convert_mgvq.py mgvq_f16c32_g8.pt mgvq_f16c32_g8.safetensors

The official files keep their weights under `model` (evaluation/eval_recon.py) or
`state_dict` (MGVQ.load_model); both are accepted, as is a bare state dict. Only what the
encoder side needs is kept: `encoder.*`, `quant_conv.*` and `quantize.embedding.weight`
(the decoder, `post_quant_conv` and the quantiser's usage buffers are dropped). Needs torch
and safetensors (`pip install torch safetensors`).
"""
import sys

import torch
from safetensors.torch import save_file


def main():
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    src, dst = sys.argv[1], sys.argv[2]
    ckpt = torch.load(src, map_location="cpu", weights_only=False)
    for key in ("model", "state_dict"):
        if isinstance(ckpt, dict) and key in ckpt and isinstance(ckpt[key], dict):
            ckpt = ckpt[key]
            break
    keep = {
        k.removeprefix("module."): v.detach().float().contiguous()
        for k, v in ckpt.items()
        if torch.is_tensor(v)
        and (k.removeprefix("module.").startswith(("encoder.", "quant_conv."))
             or k.removeprefix("module.") == "quantize.embedding.weight")
    }
    if "quantize.embedding.weight" not in keep:
        raise SystemExit(f"{src}: no quantize.embedding.weight; is this an MGVQ checkpoint?")
    save_file(keep, dst, metadata={"format": "pt", "source": src.split("/")[-1]})
    print(f"wrote {len(keep)} tensors to {dst}")


if __name__ == "__main__":
    main()
