#!/usr/bin/env bash
# Counts the fsyncs foreman makes per job and sets the submit rate against this disk's
# fsync rate. Usage: deploy/bench/fsyncs.sh [JOBS]   (default 2000; needs Go and strace)
#
#  1. foreman serve runs under strace (fsync and fdatasync of every thread, to a log) in
#     front of the fake Ollama holding every chat: JOBS jobs are posted while the worker
#     waits on the first one, so the count is the submits' alone. Then the fake lets go and
#     the count until the queue is empty is what running them costs (start, end, ack).
#  2. A fresh foreman without strace takes `foreman bench submit` from 1 and from 16
#     callers (strace slows a process down: its rates are not used).
#  3. `foreman bench fsync` measures the disk under the data dir.
# Everything listens on loopback; the data lives in a temp dir under $DATA_PARENT (default
# $TMPDIR or /tmp), which is the disk measured. SECONDS_PER_RUN sets step 2's runs (5s).
set -euo pipefail
cd "$(dirname "$0")/../.."
jobs=${1:-2000}
secs=${SECONDS_PER_RUN:-5}
work=$(mktemp -d "${DATA_PARENT:-${TMPDIR:-/tmp}}/foreman-fsyncs.XXXXXX")
pids=()
# Stops what this script started, newest first; a process under strace is stopped itself
# (strace then ends with it).
cleanup() {
  local i p
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    p=${pids[i]}
    kill $(pgrep -P "$p") "$p" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

go build -o "$work/foreman" ./cmd/foreman
go build -o "$work/fakeollama" ./ollama/ollamatest/fakeollama

# start_fake [-hold]: the fake Ollama in the background; sets fake_pid and fake_url.
start_fake() {
  local out=$work/fake.$RANDOM.url
  "$work/fakeollama" "$@" >"$out" &
  fake_pid=$!
  pids+=("$fake_pid")
  for _ in $(seq 100); do [[ -s $out ]] && break; sleep 0.05; done
  fake_url=$(head -n 1 "$out")
}

# start_foreman PORT DIR [wrapper...]: foreman serve in the background until /healthz answers.
start_foreman() {
  local port=$1 dir=$2
  shift 2
  FOREMAN_ADDR=127.0.0.1:$port FOREMAN_DATA_DIR=$dir FOREMAN_OLLAMA_URL=$fake_url \
    FOREMAN_MAX_QUEUE=1000000 FOREMAN_LOG_LEVEL=warn "$@" "$work/foreman" serve 2>>"$work/serve.log" &
  foreman_pid=$!
  pids+=("$foreman_pid")
  for _ in $(seq 600); do curl -fs -o /dev/null "http://127.0.0.1:$port/healthz" && return; sleep 0.05; done
  echo "foreman did not start; see its log:" >&2
  cat "$work/serve.log" >&2
  exit 1
}

# wait_idle PORT: until no job runs or waits.
wait_idle() {
  until curl -fs "http://127.0.0.1:$1/queue" | grep -q '"running":null.*"total":0'; do sleep 0.1; done
}

fsyncs() { grep -cE '(fsync|fdatasync)\(' "$work/strace.log" || true; }

port=${PORT:-18470}
echo "== 1. fsyncs per job ($jobs jobs, foreman under strace)"
start_fake -hold
start_foreman "$port" "$work/data1" strace -f -qq -e trace=fsync,fdatasync -o "$work/strace.log"
base=$(fsyncs)
"$work/foreman" bench submit --url "http://127.0.0.1:$port" --callers 16 -n "$jobs" >/dev/null
submitted=$(fsyncs)
kill -USR1 "$fake_pid"
wait_idle "$port"
ran=$(fsyncs)
per_submit=$(awk -v a="$base" -v b="$submitted" -v n="$jobs" 'BEGIN{printf "%.2f", (b-a)/n}')
per_run=$(awk -v a="$submitted" -v b="$ran" -v n="$jobs" 'BEGIN{printf "%.2f", (b-a)/n}')
echo "fsyncs per submit: $per_submit   per run (start to ack): $per_run"

echo "== 2. POST /jobs, ${secs}s from 1 caller, then from 16 (no strace)"
kill $(pgrep -P "$foreman_pid") "$fake_pid"
wait "$foreman_pid" "$fake_pid" 2>/dev/null || true
start_fake
start_foreman $((port + 1)) "$work/data2"
rate() { grep -o '"submits_per_s": [0-9.]*' | awk '{printf "%.0f", $2}'; }
one=$("$work/foreman" bench submit --url "http://127.0.0.1:$((port + 1))" --callers 1 --duration "${secs}s" --json | rate)
wait_idle $((port + 1))
sixteen=$("$work/foreman" bench submit --url "http://127.0.0.1:$((port + 1))" --callers 16 --duration "${secs}s" --json | rate)
echo "submits/s: 1 caller $one, 16 callers $sixteen"

echo "== 3. the disk"
disk=$("$work/foreman" bench fsync --dir "$work" -n 2000 --json | grep -o '"fsyncs_per_s": [0-9.]*' | awk '{printf "%.0f", $2}')
echo "fsyncs/s: $disk"

echo "== summary"
awk -v s="$per_submit" -v r="$per_run" -v one="$one" -v six="$sixteen" -v d="$disk" 'BEGIN{
  printf "fsyncs per job             %s at submit + %s to run = %.2f\n", s, r, s+r
  printf "disk fsync rate            %d/s\n", d
  printf "submits/s ÷ fsyncs/s       1 caller %.3f, 16 callers %.3f\n", one/d, six/d
  printf "fsyncs of time per submit  1 caller %.1f, 16 callers %.1f\n", d/one, d/six
}'
