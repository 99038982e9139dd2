#!/usr/bin/env bash
# The paper's claims tested at small scale on ShapesVQA (docs/results.md, docs/results/).
#
# Every arm starts from the same per-seed stages, trained once per seed by
# scripts/train-demo.sh (stages 1-5b: data, vocabulary, the MGVQ tokenizer, the vision tower,
# stage 1 and stage 1b in mode `none`), and trains only its compression stage: the same steps,
# batch, learning rate, data order and seed, the paper's objective (answer tokens, and with
# them the questions' tokens as in stage 1b; no scene probe). Then `htc eval` on the test
# split, `htc score`, and one JSON file per arm and seed under the results folder; `htc report`
# turns those into the page.
#
# Usage: scripts/experiments.sh [--quick] [--only GROUPS] [--seeds "0 1 2"]
#   --quick   every arm on a toy setting (a check of the pipeline, not of the numbers), into
#             runs/experiments-quick/ (its page: runs/experiments-quick/results.md)
#   --only    a comma-separated subset of the groups: modes, nd, mask, fusion (the core
#             claims, every seed), anchors, kl, pd, pv (one seed unless SECONDARY_SEEDS says
#             otherwise), probe, attention, cost
#   --seeds   the seeds of the core groups (default "0 1 2"; the secondary ones: "0")
# A run that stops resumes where it stopped: finished arms (their JSON exists) and finished
# shared stages are not redone. Sizes come from the variables below (environment overrides:
# STEPS, TEST_IMAGES, TOK_STEPS, QA_STEPS, SECONDARY_SEEDS, EXP_WORK, HTC_BIN).
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$HTC_ROOT"

quick=0
only=modes,nd,mask,fusion,anchors,kl,pd,pv,probe,attention,cost
seeds="0 1 2"
while [ $# -gt 0 ]; do
  case $1 in
    --quick) quick=1 ;;
    --only) only=$2; shift ;;
    --seeds) seeds=$2; shift ;;
    *) echo "unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
  shift
done
for g in ${only//,/ }; do
  case $g in
    modes | nd | mask | fusion | anchors | kl | pd | pv | probe | attention | cost) ;;
    *) echo "--only: unknown group \`$g\` (modes, nd, mask, fusion, anchors, kl, pd, pv, probe, attention, cost)" >&2
      exit 2 ;;
  esac
done
wants() { [[ ",$only," == *",$1,"* ]]; }

if [ $quick = 1 ]; then
  work=${EXP_WORK:-runs/experiments-quick}
  results=$work/results
  page=$work/results.md
  export IMAGES=48 VAL_IMAGES=8 TEST_IMAGES=${TEST_IMAGES:-24} TOK_STEPS=${TOK_STEPS:-2} VISION_STEPS=2 LLAVA_STEPS=2
  export QA_STEPS=${QA_STEPS:-2}
  steps=${STEPS:-2}
  batch=8
  [ "$seeds" = "0 1 2" ] && seeds="0 1"
  probe_counts=(32 16)
  repeats=2
else
  work=${EXP_WORK:-runs/experiments}
  results=docs/results
  page=docs/results.md
  export IMAGES=6000 VAL_IMAGES=200 TEST_IMAGES=${TEST_IMAGES:-1000} TOK_STEPS=${TOK_STEPS:-300}
  export VISION_STEPS=300 LLAVA_STEPS=300 QA_STEPS=${QA_STEPS:-1000}
  steps=${STEPS:-300}
  batch=32
  probe_counts=(1000 500)
  repeats=20
fi
secondary_seeds=${SECONDARY_SEEDS:-${seeds%% *}}
lr=1e-3
recipe=recipes/shapes-demo
start=$(date +%s)

if [ -n "${HTC_BIN:-}" ]; then
  htc=$HTC_BIN
else
  log "building the worker (release)"
  cargo build --quiet --release -p htc-worker --bin htc
  htc="$CARGO_TARGET_DIR/release/htc"
fi
export HTC_BIN=$htc
mkdir -p "$work" "$results"
data=$work/data

# What each arm is: mode, N_d, mask topology, fusion, P_d layers, KL weight, data, the stages
# it starts from (main, or pvlinear: stages 1-5b with a linear P_v) and how it is evaluated.
spec() {
  local mode=htc nd=4 topo=star fusion=before layers=2 kl=0 data=shapes base=main anchors=own
  case $1 in
    none) mode=none ;;
    blank) mode=none data=blank ;;
    avgpool) mode=avgpool ;;
    voco-causal) mode=voco topo=causal ;;
    voco) mode=voco ;;
    discrete) mode=discrete ;;
    htc) ;;
    nd1) nd=1 ;;
    nd2) nd=2 ;;
    nd8) nd=8 ;;
    mask-causal) topo=causal ;;
    mask-full) topo=full ;;
    fusion-after) fusion=after ;;
    fusion-mean) fusion=mean ;;
    htc-anchors-shuffled) anchors=shuffled ;;
    kl-0.01) kl=0.01 ;;
    kl-0.1) kl=0.1 ;;
    kl-1) kl=1 ;;
    pd-linear) layers=1 ;;
    pd-3) layers=3 ;;
    pv-linear) base=pvlinear ;;
    *) echo "unknown arm $1" >&2; return 1 ;;
  esac
  echo "$mode $nd $topo $fusion $layers $kl $data $base $anchors"
}

core_arms=()
secondary_arms=()
add() { local -n list=$1; shift; for a in "$@"; do [[ " ${list[*]} " == *" $a "* ]] || list+=("$a"); done; }
wants modes && add core_arms none blank avgpool voco-causal voco discrete htc
wants nd && add core_arms none blank nd1 nd2 htc nd8
wants mask && add core_arms none blank htc mask-causal mask-full
wants fusion && add core_arms none blank htc fusion-after fusion-mean
wants anchors && add secondary_arms htc htc-anchors-shuffled
wants kl && add secondary_arms kl-0.01 kl-0.1 kl-1
wants pd && add secondary_arms pd-linear pd-3
wants pv && add secondary_arms pv-linear
# Secondary arms compare against htc, and retention needs none and blank, on their seed.
[ ${#secondary_arms[@]} -gt 0 ] && add secondary_arms none blank htc

# The plan: the core groups seed by seed (each seed's shared stages, its arms, its probes and
# attention maps; the costs on the first seed), then the secondary groups on their seeds. So a
# stopped run has whole seeds of the core claims first. Units weigh the steps for the
# time-left estimate (shared stages of a seed ≈ 5 arms).
plan=()
first=${seeds%% *}
if [ ${#core_arms[@]} -gt 0 ] || wants probe || wants attention || wants cost; then
  for s in $seeds; do
    plan+=("shared main $s")
    for a in "${core_arms[@]}"; do plan+=("arm $a $s"); done
    if wants probe; then for a in htc voco; do plan+=("probe $a $s"); done; fi
    if wants attention; then for a in htc voco; do plan+=("attention $a $s"); done; fi
    if wants cost && [ "$s" = "$first" ]; then
      for a in none avgpool voco discrete htc; do plan+=("cost $a $s"); done
    fi
  done
fi
if [ ${#secondary_arms[@]} -gt 0 ]; then
  for s in $secondary_seeds; do
    plan+=("shared main $s")
    [[ " ${secondary_arms[*]} " == *" pv-linear "* ]] && plan+=("shared pvlinear $s")
    for a in "${secondary_arms[@]}"; do plan+=("arm $a $s"); done
  done
fi

units_of() { case $1 in shared) echo 5 ;; arm) echo 1 ;; *) echo 0 ;; esac; }
total_units=0
for t in "${plan[@]}"; do total_units=$((total_units + $(units_of ${t%% *}))); done
done_units=0
spent=0 # seconds of work done in this run (finished tasks only)
mins() { echo "$(( ($1 + 59) / 60 )) min"; }
progress() {
  local left=""
  if [ $done_units -gt 0 ]; then
    left=", about $(mins $(( (total_units - done_units) * spent / done_units ))) left"
  fi
  log "[$1/${#plan[@]}] $2 (elapsed $(mins $(( $(date +%s) - start )))$left)"
}

# shared BASE SEED: stages 1-5b of train-demo.sh into $work/seed-S (or seed-S-pvlinear), the
# data shared by every seed.
shared_dir() { if [ "$1" = main ]; then echo "$work/seed-$2"; else echo "$work/seed-$2-$1"; fi; }
shared() {
  local base=$1 s=$2 dir
  dir=$(shared_dir "$base" "$s")
  [ -f "$dir/shared_seconds" ] && return 1
  mkdir -p "$dir"
  # The data (and its descriptions-only copy) are generated once, by the first seed's run.
  for d in data describe-data; do
    if [ ! -e "$dir/$d" ] && [ -d "$work/$d" ]; then ln -s "$(realpath "$work/$d")" "$dir/$d"; fi
  done
  local r=$recipe
  if [ "$base" = pvlinear ]; then
    # The same data and MGVQ tokenizer as the seed's main stages; a vision tower and stages
    # 1-1b of its own, with a linear P_v.
    [ -e "$dir/mgvq" ] || ln -s "$(realpath "$(shared_dir main "$s")/mgvq")" "$dir/mgvq"
    r=$work/recipe-pvlinear
    mkdir -p "$r"
    cp "$recipe/mgvq.json" "$r/"
    sed 's/"continuous_projector": "mlp2x_gelu"/"continuous_projector": "linear"/' "$recipe/model.json" >"$r/model.json"
    grep -q '"continuous_projector": "linear"' "$r/model.json"
  fi
  local t0=$(date +%s)
  SEED=$s RECIPE=$r STOP_AFTER=qa scripts/train-demo.sh "$dir" >"$dir/log.txt" 2>&1 || {
    tail -20 "$dir/log.txt" >&2
    return 2
  }
  for d in data describe-data; do
    [ -d "$work/$d" ] || { mv "$dir/$d" "$work/$d" && ln -s "$(realpath "$work/$d")" "$dir/$d"; }
  done
  echo $(( $(date +%s) - t0 )) >"$dir/shared_seconds"
}

blank_data() {
  [ -f "$work/blank/test.json" ] && return
  "$htc" data blank --data "$data/train.json" --images "$data" --out "$work/blank" >/dev/null
  "$htc" data blank --data "$data/test.json" --images "$data" --out "$work/blank" >/dev/null
}

# arm NAME SEED: the compression stage from the seed's stage-1b checkpoint, then the test
# split; writes $results/runs/NAME/seed-S.json.
arm() {
  local name=$1 s=$2 out=$results/runs/$1/seed-$2.json
  [ -f "$out" ] && return 1
  read -r mode nd topo fusion layers kl dset base anchors <<<"$(spec "$name")"
  local from dir=$work/arms/$name/seed-$s train_s=0 model
  from=$(shared_dir "$base" "$s")
  if [ "$anchors" = shuffled ]; then
    model=$work/arms/htc/seed-$s/run/checkpoint-$steps
    [ -d "$model" ] || { echo "arm $name needs arm htc of seed $s first" >&2; return 2; }
    rm -rf "$dir" && mkdir -p "$dir"
  else
    rm -rf "$dir" && mkdir -p "$dir"
    "$htc" init --llava "$from/qa/checkpoint-$QA_STEPS" --mgvq "$from/mgvq/model.safetensors" \
      --mgvq-config "$recipe/mgvq.json" --discrete-hidden 256 --dtype f32 --seed "$s" --mode "$mode" \
      --n-discrete "$nd" --topology "$topo" --fusion "$fusion" --discrete-layers "$layers" --out "$dir/init" \
      >"$dir/log.txt" 2>&1
    local d=$data
    if [ "$dset" = blank ]; then blank_data; d=$work/blank; fi
    local t0=$(date +%s)
    "$htc" train --model "$dir/init" --mode "$mode" --data "$d/train.json" --images "$d" --out "$dir/run" \
      --train voco,projector,discrete,llm --lr $lr --warmup-steps 30 --global-batch $batch \
      --micro-batch $((batch / 2)) --max-steps "$steps" --save-every "$steps" --keep 1 --seed "$s" \
      --train-on-inputs --kl-weight "$kl" --quiet >>"$dir/log.txt" 2>&1 || { tail -5 "$dir/log.txt" >&2; return 2; }
    train_s=$(( $(date +%s) - t0 ))
    model=$dir/run/checkpoint-$steps
    # Only the trained weights are kept (the optimizer moments and the starting point are not
    # needed again).
    rm -rf "$model/trainer_state.safetensors" "$dir/init"
  fi
  local d=$data extra=()
  [ "$dset" = blank ] && d=$work/blank
  [ "$anchors" = shuffled ] && extra=(--anchors-of-other-images "$s")
  local t1=$(date +%s)
  "$htc" eval --model "$model" --data "$d/test.json" --images "$d" --out "$dir/answers.jsonl" --restart --quiet \
    "${extra[@]}" >>"$dir/log.txt" 2>&1 || { tail -5 "$dir/log.txt" >&2; return 2; }
  local eval_s=$(( $(date +%s) - t1 ))
  "$htc" score --benchmark shapes --predictions "$dir/answers.jsonl" --annotations "$d/test.json" --json \
    >"$dir/score.json" 2>>"$dir/log.txt"
  mkdir -p "$(dirname "$out")"
  printf '{"arm": "%s", "seed": %s, "config": {"mode": "%s", "n_discrete": %s, "topology": "%s", "fusion": "%s", "discrete_layers": %s, "continuous_projector": "%s", "kl_weight": %s, "anchors": "%s", "data": "%s"}, "steps": %s, "train_seconds": %s, "eval_seconds": %s, "eval": %s}\n' \
    "$name" "$s" "$mode" "$nd" "$topo" "$fusion" "$layers" \
    "$([ "$base" = pvlinear ] && echo linear || echo mlp2x_gelu)" "$kl" "$anchors" "$dset" "$steps" "$train_s" \
    "$eval_s" "$(cat "$dir/score.json")" >"$out.tmp"
  mv "$out.tmp" "$out"
}

# analysis KIND ARM SEED: htc analyze on the arm's trained model.
analysis() {
  local kind=$1 name=$2 s=$3 model=$work/arms/$2/seed-$3/run/checkpoint-$steps out
  if [ "$kind" = cost ]; then out=$results/cost/$name.json; else out=$results/$kind/$name/seed-$s.json; fi
  [ -f "$out" ] && return 1
  [ -d "$model" ] || { log "   ($kind of $name seed $s skipped: the arm was not trained in this selection)"; return 1; }
  case $kind in
    probe) "$htc" analyze probe --model "$model" --train-scenes "$data/train.scenes.json" --train-images "$data" \
      --test-scenes "$data/test.scenes.json" --test-images "$data" --train-count "${probe_counts[0]}" \
      --test-count "${probe_counts[1]}" --seed "$s" --out "$out.tmp" >/dev/null ;;
    attention) "$htc" analyze attention --model "$model" --scenes "$data/test.scenes.json" --images "$data" \
      --count 16 --heatmaps 4 --out "$out.tmp" >/dev/null ;;
    cost) "$htc" analyze cost --model "$model" --image "$(ls "$data"/test/*.png | head -1)" \
      --question "What color is the star?" --repeats $repeats --out "$out.tmp" >/dev/null ;;
  esac
  mv "$out.tmp" "$out"
}

# The settings and the page, rewritten after every task (a stopped run leaves a page of what
# is done).
write_page() {
  local shared_json
  shared_json=$(for f in "$work"/seed-*/shared_seconds; do
    [ -f "$f" ] || continue
    n=$(basename "$(dirname "$f")"); printf '"%s": %s, ' "${n#seed-}" "$(cat "$f")"
  done)
  cat >"$results/setup.json.tmp" <<EOF
{"quick": $([ $quick = 1 ] && echo true || echo false), "seeds": [$(echo $seeds | sed 's/ /, /g')],
 "secondary_seeds": [$(echo $secondary_seeds | sed 's/ /, /g')], "steps": $steps, "batch": $batch, "lr": $lr,
 "train_images": $IMAGES, "test_questions": $TEST_IMAGES, "tokenizer_steps": $TOK_STEPS,
 "stage1_steps": $LLAVA_STEPS, "stage1b_steps": $QA_STEPS,
 "model": {"recipe": "$recipe", "llm_width": $(sed -n 's/.*"hidden_size": \([0-9]*\),.*/\1/p' $recipe/model.json | head -1)},
 "shared_seconds": {${shared_json%, }}, "date": "$(date -u +%F)",
 "notes": "Every arm trains its compression stage for the same steps from its seed's stage-1b checkpoint, the demo model's size and data for all. The time each arm took is in its raw JSON (train_seconds, eval_seconds), the shared stages' above. Arms run one after another, each training its two micro-batches on two threads; running two arms at once was not measured and is not done."}
EOF
  mv "$results/setup.json.tmp" "$results/setup.json"
  "$htc" report --results "$results" --out "$page" >/dev/null
}

i=0
for t in "${plan[@]}"; do
  i=$((i + 1))
  read -r kind what s <<<"$t"
  t0=$(date +%s)
  progress $i "$kind $what, seed $s"
  rc=0
  case $kind in
    shared) shared "$what" "$s" || rc=$? ;;
    arm) arm "$what" "$s" || rc=$? ;;
    *) analysis "$kind" "$what" "$s" || rc=$? ;;
  esac
  case $rc in
    0) spent=$((spent + $(date +%s) - t0)); done_units=$((done_units + $(units_of "$kind"))) ;;
    1) total_units=$((total_units - $(units_of "$kind"))); log "   (already done)" ;;
    *) log "failed: $kind $what seed $s"; exit 1 ;;
  esac
  [ $rc = 0 ] && write_page
done
write_page

log "done in $(mins $(( $(date +%s) - start ))): $page"
