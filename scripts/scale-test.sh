#!/usr/bin/env bash
# Scale-out test on loopback: 3 workers (the demo model) behind HAProxy, which health-checks
# them on /healthz and hashes the `session` URL parameter (the load client sets it to the
# image's digest), so every question about one image, from any client, reaches the worker that
# holds its compressed image, and a WebSocket stays on its worker. `htc load` runs 64 clients ×
# 100 questions (4 about each image, each image visited by 2 clients); mid-run one worker is
# killed (SIGKILL) and restarted; afterwards every distinct question is asked of one worker
# directly, and each answer of the run must equal its answer. Prints answers lost and mixed up (both must be 0: a client
# that sees a failure retries), p50/p99 latency, throughput, cache hit rate and each worker's
# share; exits non-zero if anything was lost or mixed up. Stops everything it started.
#
# Usage: scripts/scale-test.sh [WORK_DIR]   (default: a fresh temp dir)
# Sizes: CLIENTS (64), QUESTIONS (100 per client), PORT (base port, 18900: the balancer; the
# workers take the next three), KILL_AFTER (seconds into the run, 4), DOWN_FOR (seconds, 3),
# MODEL (models/shapes-demo), HTC_BIN (a built `htc`, else the debug build).
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$HTC_ROOT"
work=${1:-$(mktemp -d /tmp/htc-scale.XXXXXX)}
clients=${CLIENTS:-64}
questions=${QUESTIONS:-100}
port=${PORT:-18900}
kill_after=${KILL_AFTER:-4}
down_for=${DOWN_FOR:-3}
model=${MODEL:-$HTC_ROOT/models/shapes-demo}
mkdir -p "$work"

command -v haproxy >/dev/null || { log "haproxy is missing: run scripts/setup.sh"; exit 1; }
if [ -n "${HTC_BIN:-}" ]; then
  htc=$HTC_BIN
else
  log "building the worker"
  cargo build --quiet -p htc-worker --bin htc
  htc="$CARGO_TARGET_DIR/debug/htc"
fi
for p in "$port" $((port + 1)) $((port + 2)) $((port + 3)); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    log "port $p on 127.0.0.1 is taken; set PORT to another base"
    exit 1
  fi
done

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

declare -A worker_pid
start_worker() {
  local i=$1
  HTC_LOG=warn "$htc" serve --model "$model" --addr "127.0.0.1:$((port + i))" --api-only \
    --queue 256 --cache-capacity 256 >>"$work/worker$i.log" 2>&1 &
  worker_pid[$i]=$!
  pids+=($!)
}
wait_healthy() {
  local url=$1
  for _ in $(seq 1 300); do
    curl -fsS "$url/healthz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  log "$url did not become healthy"
  return 1
}

log "ShapesVQA questions for the run"
# The run visits clients × questions / (4 per image × 2 revisits) images.
images=$((clients * questions / 8 + 16))
[ -f "$work/data/test.json" ] || "$htc" data shapes --out "$work/data" --split test --images "$images" --seed 7 \
  --questions-per-image 4 >/dev/null

log "3 workers on 127.0.0.1:$((port + 1))-$((port + 3))"
for i in 1 2 3; do start_worker "$i"; done
for i in 1 2 3; do wait_healthy "http://127.0.0.1:$((port + i))"; done

cat >"$work/haproxy.cfg" <<EOF
global
  maxconn 4096
defaults
  mode http
  timeout connect 2s
  timeout client 60s
  timeout server 60s
  timeout tunnel 120s
  option redispatch
  retries 3
frontend htc
  bind 127.0.0.1:$port
  default_backend workers
backend workers
  # One image's questions go to one worker (its compressed-image cache); consistent hashing
  # moves only a dead worker's images when it leaves, and brings them back when it returns.
  balance url_param session
  hash-type consistent
  option httpchk GET /healthz
  http-check expect status 200
  default-server inter 300ms fall 2 rise 2 on-marked-down shutdown-sessions
  server w1 127.0.0.1:$((port + 1)) check
  server w2 127.0.0.1:$((port + 2)) check
  server w3 127.0.0.1:$((port + 3)) check
EOF
haproxy -c -f "$work/haproxy.cfg" >/dev/null
haproxy -db -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 &
pids+=($!)
wait_healthy "http://127.0.0.1:$port"

log "load: $clients clients × $questions questions through HAProxy on 127.0.0.1:$port"
"$htc" load --url "ws://127.0.0.1:$port" --data "$work/data/test.json" --images "$work/data" \
  --clients "$clients" --questions "$questions" --per-image 4 --revisits 2 \
  --reference-url "ws://127.0.0.1:$((port + 1))" --json "$work/report.json" >"$work/load.out" 2>"$work/load.err" &
load=$!
pids+=($load)
# Worker 2 dies during the run and comes back.
until grep -q "^running:" "$work/load.err" 2>/dev/null; do
  kill -0 "$load" 2>/dev/null || break
  sleep 0.2
done
sleep "$kill_after"
if kill -0 "$load" 2>/dev/null; then
  log "killing worker 2 (SIGKILL) ${kill_after} s into the run"
  kill -9 "${worker_pid[2]}"
  wait "${worker_pid[2]}" 2>/dev/null || true
  sleep "$down_for"
  log "restarting worker 2 after ${down_for} s"
  start_worker 2
  wait_healthy "http://127.0.0.1:$((port + 2))"
else
  log "the run ended before the kill: raise QUESTIONS or lower KILL_AFTER"
fi
status=0
wait "$load" || status=$?
cat "$work/load.err" "$work/load.out"
log "each worker's share (questions accepted, cache hits, compressions; worker 1 includes the reference pass, worker 2 counts since its restart)"
for i in 1 2 3; do
  m=$(curl -fsS "http://127.0.0.1:$((port + i))/metrics" || true)
  q=$(awk '$1=="htc_questions_total"{print $2}' <<<"$m")
  h=$(awk '$1=="htc_cache_hits_total"{print $2}' <<<"$m")
  c=$(awk '$1=="htc_compressions_total"{print $2}' <<<"$m")
  echo "  worker $i: ${q:-?} questions, ${h:-?} cache hits, ${c:-?} compressions"
done
echo "report: $work/report.json"
exit "$status"
