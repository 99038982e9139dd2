#!/usr/bin/env bash
# The recipe of the ShapesVQA demo model (models/shapes-demo), from nothing to a served model:
#   1. ShapesVQA v1 data: a training split (questions grouped per image), a held-out split for
#      the tokenizer, and a fresh test split from a seed training never sees;
#   2. the word-level tokenizer of the data's vocabulary;
#   3. the MGVQ image tokenizer, trained as a VQ-VAE (`htc train-tokenizer`);
#   4. an HTC model from scratch (`htc init --config recipes/shapes-demo/model.json`) with that
#      tokenizer frozen inside, trained end to end (`htc train`: ViT, projectors, <voco>, LLM);
#   5. `htc eval` on the test split; the model, its metrics, plots and eval report are copied
#      to models/shapes-demo (or $HTC_DEMO_OUT).
# Usage: scripts/train-demo.sh [WORK_DIR]   (default runs/shapes-demo; prints the time taken)
# Sizes can be overridden for a quick look: IMAGES, TOK_STEPS, STEPS, TEST_IMAGES.
#
# Status: every step runs, but within this budget on a 2-core CPU the trained model does not
# get past answering each question family's most frequent answer (about 35-40% exact match),
# and the VQ-VAE reconstructs the background only. README § "The demo model" has the
# measurements; models/shapes-demo is not committed until the recipe reaches its target.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$HTC_ROOT"
work=${1:-runs/shapes-demo}
dest=${HTC_DEMO_OUT:-models/shapes-demo}
images=${IMAGES:-8000}
tok_steps=${TOK_STEPS:-400}
steps=${STEPS:-2000}
test_images=${TEST_IMAGES:-2000}
recipe=recipes/shapes-demo
start=$(date +%s)
elapsed() { echo "$(( $(date +%s) - start )) s"; }

log "building the worker (release)"
cargo build --quiet --release -p htc-worker --bin htc
htc="$CARGO_TARGET_DIR/release/htc"
mkdir -p "$work"
data="$work/data"

log "1. ShapesVQA v1: $images training scenes (4 questions and a description each), 64 held-out, $test_images test"
"$htc" data shapes --out "$data" --split train --images "$images" --seed 1 --questions-per-image 4 --describe
"$htc" data shapes --out "$data" --split val --images 64 --seed 1 --questions-per-image 1
"$htc" data shapes --out "$data" --split test --images "$test_images" --seed 2 --questions-per-image 1

log "2. word-level tokenizer"
"$htc" data vocab --data "$data/train.json" --out "$work/tokenizer.json"

log "3. MGVQ tokenizer ($tok_steps steps) [$(elapsed)]"
"$htc" train-tokenizer --images "$data/train" --val-images "$data/val" --config "$recipe/mgvq.json" \
  --decoder-widths 64,64,32,16,16 --out "$work/mgvq" --steps "$tok_steps" --batch 16 --lr 2e-3 \
  --warmup-steps 20 --restart-every 25 --seed 0 --quiet

log "4. HTC model from scratch, trained $steps steps [$(elapsed)]"
rm -rf "$work/init" "$work/run"
"$htc" init --config "$recipe/model.json" --tokenizer "$work/tokenizer.json" \
  --mgvq "$work/mgvq/model.safetensors" --out "$work/init" --seed 0
"$htc" train --model "$work/init" --data "$data/train.json" --images "$data" --out "$work/run" \
  --train voco,projector,discrete,llm,vision --lr 2e-3 --warmup-steps 30 --weight-decay 0.1 \
  --global-batch 32 --micro-batch 32 --max-steps "$steps" --save-every "$steps" --keep 1 --seed 0 --quiet
model="$work/run/checkpoint-$steps"

log "5. evaluation on the fresh test split [$(elapsed)]"
"$htc" eval --model "$model" --data "$data/test.json" --images "$data" --out "$work/eval.jsonl" \
  | tee "$work/eval.txt"

log "copying the model to $dest"
rm -rf "$dest.tmp"
mkdir -p "$dest.tmp/tokenizer"
for f in config.json model.safetensors tokenizer.json preprocessor_config.json; do
  cp "$model/$f" "$dest.tmp/$f"
done
cp "$work/run/metrics.jsonl" "$dest.tmp/metrics.jsonl"
cp "$work/run/loss.png" "$dest.tmp/loss.png"
cp "$work/eval.txt" "$dest.tmp/eval.txt"
for f in config.json model.safetensors metrics.jsonl loss.png recon.png; do
  cp "$work/mgvq/$f" "$dest.tmp/tokenizer/$f"
done
[ -f "$dest/README.md" ] && cp "$dest/README.md" "$dest.tmp/README.md"
rm -rf "$dest" && mv "$dest.tmp" "$dest"
log "done in $(elapsed): $dest"
