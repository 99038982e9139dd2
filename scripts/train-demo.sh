#!/usr/bin/env bash
# The recipe of the ShapesVQA demo model (models/shapes-demo), from nothing to a served model:
#   1. ShapesVQA v1 data: a training split (one conversation per image: 4 questions, then a
#      description), the same scenes as descriptions only, a held-out split, and a test split
#      from a seed training never sees;
#   2. the word-level tokenizer of the data's vocabulary;
#   3. the MGVQ image tokenizer, trained as a VQ-VAE (`htc train-tokenizer`), then frozen;
#   4. an HTC model from scratch (`htc init --config recipes/shapes-demo/model.json`) around that
#      tokenizer, its vision tower pretrained on the scenes' per-cell labels (`htc pretrain-vision`);
#   5. stage 1, LLaVA-style (`htc train --mode none`, descriptions): every patch visible, the
#      projector and LLM learn to read the patches (what HTC starts from in the paper: a trained
#      LLaVA);
#   5b. stage 1b, still every patch visible: the conversations, the questions' tokens scored
#      too (`--train-on-inputs`), where an LLM trained from nothing starts to bind an object's
#      words to its patch;
#   6. stage 2, HTC: first the compression alone (`--mode htc --probe-only`: a training-only
#      probe on <voco>, `--scene-loss`, asks the one token to carry the whole scene, with no
#      text to answer), then the conversations, the text seeing the image only through <voco>,
#      with the probe still on;
#   7. `htc eval` on the test split; the model, its metrics, plots and eval report are copied
#      to models/shapes-demo (or $HTC_DEMO_OUT).
# Stages whose output already exists in WORK_DIR are skipped (a rerun after an interruption).
# Usage: scripts/train-demo.sh [WORK_DIR]   (default runs/shapes-demo; prints the time taken)
# Sizes can be overridden for a quick look: IMAGES, VAL_IMAGES, TOK_STEPS, VISION_STEPS,
# LLAVA_STEPS, QA_STEPS, PROBE_STEPS, STEPS, SCENE_LOSS, TEST_IMAGES; HTC_BIN runs that `htc` binary instead of building
# the release one (the CI test of this script runs it at toy sizes that way).
# For scripts/experiments.sh, which reuses stages 1-5b: SEED (the seed of the tokenizer, the
# initial weights and every stage's data order; the data's own seeds stay fixed), RECIPE (a
# folder with model.json and mgvq.json instead of recipes/shapes-demo) and STOP_AFTER=qa (stop
# after stage 5b).
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$HTC_ROOT"
work=${1:-runs/shapes-demo}
dest=${HTC_DEMO_OUT:-models/shapes-demo}
images=${IMAGES:-6000}
val_images=${VAL_IMAGES:-200}
tok_steps=${TOK_STEPS:-300}
vision_steps=${VISION_STEPS:-300}
llava_steps=${LLAVA_STEPS:-300}
qa_steps=${QA_STEPS:-1000}
probe_steps=${PROBE_STEPS:-400}
steps=${STEPS:-2000}
scene_loss=${SCENE_LOSS:-0.5}
test_images=${TEST_IMAGES:-2000}
recipe=${RECIPE:-recipes/shapes-demo}
seed=${SEED:-0}
start=$(date +%s)
elapsed() { echo "$(( $(date +%s) - start )) s"; }

if [ -n "${HTC_BIN:-}" ]; then
  htc=$HTC_BIN
else
  log "building the worker (release)"
  cargo build --quiet --release -p htc-worker --bin htc
  htc="$CARGO_TARGET_DIR/release/htc"
fi
mkdir -p "$work"
data="$work/data"

done_() { [ -f "$1" ] && log "   (already done: $1)"; }

log "1. ShapesVQA v1: $images training scenes (4 questions and a description each), $val_images held-out, $test_images test"
if ! done_ "$data/test.json"; then
  "$htc" data shapes --out "$data" --split train --images "$images" --seed 1 --questions-per-image 4 --describe \
    --grouped
  "$htc" data shapes --out "$work/describe-data" --split train --images "$images" --seed 1 --questions-per-image 0 --describe
  "$htc" data shapes --out "$data" --split val --images "$val_images" --seed 1 --questions-per-image 1
  "$htc" data shapes --out "$data" --split test --images "$test_images" --seed 2 --questions-per-image 1
fi

log "2. word-level tokenizer"
done_ "$work/tokenizer.json" || "$htc" data vocab --data "$data/train.json" --out "$work/tokenizer.json"

log "3. MGVQ tokenizer, a VQ-VAE ($tok_steps steps) [$(elapsed)]"
done_ "$work/mgvq/model.safetensors" || "$htc" train-tokenizer --images "$data/train" --val-images "$data/val" \
  --config "$recipe/mgvq.json" --decoder-widths 64,64,32,16,16 --out "$work/mgvq" --steps "$tok_steps" --batch 16 \
  --lr 1e-3 --warmup-steps 20 --restart-every 25 --foreground-weight 20 --val-count 8 --seed "$seed" --quiet

log "4. HTC model from scratch around the tokenizer; vision tower pretrained on scene labels [$(elapsed)]"
if ! done_ "$work/vision/model.safetensors"; then
  rm -rf "$work/init" "$work/vision"
  "$htc" init --config "$recipe/model.json" --tokenizer "$work/tokenizer.json" \
    --mgvq "$work/mgvq/model.safetensors" --out "$work/init" --seed "$seed"
  "$htc" pretrain-vision --model "$work/init" --scenes "$data/train.scenes.json" --images "$data" \
    --val-scenes "$data/val.scenes.json" --out "$work/vision" --steps "$vision_steps" --batch 32 --lr 1e-3 --seed "$seed" --quiet
fi

# stage NAME FROM MODE DATA_DIR TRAIN STEPS [OPTIONS…]: one `htc train` run into $work/NAME
# (global batch $STAGE_BATCH, 32 unless set, in two micro-batches that train on two threads;
# peak learning rate $STAGE_LR, 1e-3 unless set).
stage() {
  local name=$1 from=$2 mode=$3 dir=$4 train=$5 n=$6
  shift 6
  done_ "$work/$name/checkpoint-$n/model.safetensors" && return
  rm -rf "$work/$name"
  "$htc" train --model "$from" --mode "$mode" --data "$dir/train.json" --images "$dir" --out "$work/$name" \
    --train "$train" --lr "${STAGE_LR:-1e-3}" --warmup-steps 30 --global-batch "${STAGE_BATCH:-32}" --micro-batch "$(( ${STAGE_BATCH:-32} / 2 ))" \
    --max-steps "$n" \
    --save-every "$n" --keep 1 --seed "$seed" --quiet "$@"
}

log "5. stage 1, LLaVA-style: all patches visible, descriptions ($llava_steps steps) [$(elapsed)]"
stage llava "$work/vision" none "$work/describe-data" projector,llm "$llava_steps"

log "5b. stage 1b: all patches visible, the conversations, questions scored too ($qa_steps steps) [$(elapsed)]"
STAGE_BATCH=16 STAGE_LR=2e-3 stage qa "$work/llava/checkpoint-$llava_steps" none "$data" projector,llm "$qa_steps" \
  --train-on-inputs

if [ "${STOP_AFTER:-}" = qa ]; then
  log "stopped after stage 1b in $(elapsed): $work/qa/checkpoint-$qa_steps"
  exit 0
fi

log "6a. stage 2, HTC: the compression alone, on the scene probe ($probe_steps steps) [$(elapsed)]"
STAGE_BATCH=64 stage compress "$work/qa/checkpoint-$qa_steps" htc "$data" voco,projector,discrete,llm \
  "$probe_steps" --scene-loss 1 --scenes "$data/train.scenes.json" --probe-only

log "6b. stage 2, HTC: the image through <voco> alone, the conversations, scene probe $scene_loss ($steps steps) [$(elapsed)]"
stage run "$work/compress/checkpoint-$probe_steps" htc "$data" voco,projector,discrete,llm "$steps" \
  --scene-loss "$scene_loss" --scenes "$data/train.scenes.json" --train-on-inputs
model="$work/run/checkpoint-$steps"

log "7. evaluation on the fresh test split [$(elapsed)]"
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
for st in llava qa compress; do
  cp "$work/$st/metrics.jsonl" "$dest.tmp/${st}_metrics.jsonl"
  cp "$work/$st/loss.png" "$dest.tmp/${st}_loss.png"
done
cp "$work/vision/vision_metrics.jsonl" "$work/vision/vision_loss.png" "$dest.tmp/"
cp "$work/eval.txt" "$dest.tmp/eval.txt"
for f in config.json model.safetensors metrics.jsonl loss.png recon.png; do
  cp "$work/mgvq/$f" "$dest.tmp/tokenizer/$f"
done
[ -f "$dest/README.md" ] && cp "$dest/README.md" "$dest.tmp/README.md"
[ -f "$dest/about.json" ] && cp "$dest/about.json" "$dest.tmp/about.json"
rm -rf "$dest" && mv "$dest.tmp" "$dest"
log "done in $(elapsed): $dest"
