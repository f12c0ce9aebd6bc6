#!/usr/bin/env bash
# The whole GPU benchmark run in one call (issue 4), for a machine where this repo is the working directory,
# torch (2.11.0+cu130), transformers and triton are preinstalled, there is no network, and $OUT is a folder
# whose contents come back. It writes into $OUT:
#   gpu_run.log            everything this script and its commands printed (set -x trace included)
#   env.txt                nvidia-smi, CPU, python, the torch/triton/transformers versions
#   bench-<model>.json     the harness results (written after every phase, so a cut-short run keeps its numbers)
#   bench-<model>.txt      the rendered table; bench-<model>.md the same as Markdown; .png if matplotlib is there
#   logs/<model>/...       every phase's own log and result record
#   pytest-gpu.txt         the `pytest -m gpu` run, if any gpu tests exist
#   summary.txt            one line per step: its exit code and seconds (+ one digest line per VLM example run)
#   logs/vlm/run-{1,2}.log examples/vlm_serve.py run twice on DEVICE (the second must hit), inside the logs tarball
#
#   profile-{after,before}.txt  benchmarks/profile_hit.py of a hit on this device, with this checkout's torchkiln and
#                          (PROFILE_BEFORE_SRC) another one's; their JSON goes into the logs tarball
#
# Knobs (environment): DEVICE (cuda; `DEVICE=cpu MODELS=tiny` is the local dry run), MODELS ("demo gpt2"),
# REPS (3), CALLS (50), PHASES (all), ONCE (phases run in the first repetition only: `torchkiln bench --once`),
# SKIP_INSTALL (0), BUDGET_S (540: the whole script, leaving headroom under a 600 s call limit), PHASE_TIMEOUT_S
# (300), PYTHON (python), PROFILE_MODEL (unset: no profile), PROFILE_BEFORE_SRC (a src dir to profile as "before"),
# PROFILE_TIMEOUT_S (120 each), PYCACHE_DIR (where the bytecode goes; default under the run's temp dir),
# SKIP_DOCTOR (0), GPU_TESTS (1: run `pytest -m gpu tests/gpu`), GPU_TESTS_PATHS (tests/gpu: which test files),
# GPU_TESTS_TIMEOUT_S (240), VLM (1: run
# examples/vlm_serve.py twice), VLM_TIMEOUT_S (180 each).
# Nothing fails hard: every step is time-limited and logged, and the script exits 0 if at least one bench JSON
# was written.
set -u -o pipefail
START=$(date +%s)
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT/logs"
exec > >(tee -a "$OUT/gpu_run.log") 2>&1
set -x

DEVICE=${DEVICE:-cuda}
MODELS=${MODELS:-"demo gpt2"}
REPS=${REPS:-3}
CALLS=${CALLS:-50}
PHASES=${PHASES:-}
BUDGET_S=${BUDGET_S:-540}
PHASE_TIMEOUT_S=${PHASE_TIMEOUT_S:-300}
PYTHON=${PYTHON:-python}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/torchkiln-gpu-run.XXXXXX")
# Import this checkout whether or not the editable install below works (it needs hatchling offline).
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
# The torchkiln cache of this run: never the user's, so every miss is a real miss.
export TORCHKILN_CACHE="$WORK/tkcache"

step() {  # step NAME SECONDS CMD...: run CMD under a time limit, record its exit code and duration
  local name=$1 limit=$2 t0 rc
  shift 2
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@"
  rc=$?
  echo "$name rc=$rc seconds=$(($(date +%s) - t0))" >> "$OUT/summary.txt"
  return $rc
}
remaining() { echo $((BUDGET_S - ($(date +%s) - START))); }

{
  date -u +%Y-%m-%dT%H:%M:%SZ
  nvidia-smi || echo "nvidia-smi: not available"
  lscpu | grep -E 'Model name|^CPU\(s\)' || true
  free -g || true
  "$PYTHON" --version
  "$PYTHON" -m pip list 2>/dev/null | grep -iE '^(torch|triton|transformers|rich|platformdirs|filelock|fsspec|matplotlib|pytest) ' || true
} > "$OUT/env.txt" 2>&1

# Pure-Python dependencies the GPU image lacks (platformdirs) travel as wheels in .whl/ (see BENCHMARKS.md).
if ls .whl/*.whl >/dev/null 2>&1; then
  step wheels 120 "$PYTHON" -m pip install --no-deps --no-index .whl/*.whl || true
fi
# Editable install without dependencies, offline. Building it needs hatchling; without it (or with
# SKIP_INSTALL=1, for local dry runs) nothing is installed and PYTHONPATH above stands in: pip must not go
# looking for a build backend on a machine without network (it would only time out).
if [ "${SKIP_INSTALL:-0}" = 1 ]; then
  echo "SKIP_INSTALL=1: using PYTHONPATH=$PWD/src"
elif "$PYTHON" -c "import hatchling" 2>/dev/null; then
  PIP_NO_INDEX=1 step install 120 "$PYTHON" -m pip install --no-deps --no-build-isolation -e . \
    || echo "editable install failed: using PYTHONPATH=$PWD/src"
else
  echo "hatchling is not installed (needed to build torchkiln offline): using PYTHONPATH=$PWD/src"
fi
step sanity 120 "$PYTHON" -c "
import torch, torchkiln
print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.version.cuda)
print('torchkiln', torchkiln.__version__, torchkiln.__file__)
if torch.cuda.is_available(): print(torch.cuda.get_device_name())
"
[ "${SKIP_DOCTOR:-0}" = 1 ] || step doctor 120 "$PYTHON" -m torchkiln doctor > "$OUT/doctor.txt" 2>&1 || true

# Bytecode: the GPU image ships its Python packages without .pyc files in a location we may not write, so every
# fresh process would re-compile the sources of torch._dynamo, torch._inductor, sympy... (6.3 s of an 8.8 s hit,
# measured with cProfile: builtins.compile). pip writes .pyc files at install time on a normal machine; give every
# phase the same footing by byte-compiling once into a writable prefix.
export PYTHONPYCACHEPREFIX="${PYCACHE_DIR:-$WORK/pycache}"
SITE=$("$PYTHON" -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))')
step bytecode 300 "$PYTHON" -m compileall -q -j 0 "$SITE/torch" "$SITE/sympy" "$SITE/networkx" "$SITE/triton" \
  "$SITE/mpmath" "$SITE/jinja2" "$SITE/numpy" "$PWD/src" ${PROFILE_BEFORE_SRC:+"$PROFILE_BEFORE_SRC"} > /dev/null 2>&1 || true
step bytecode_imports 300 "$PYTHON" -c "import torch._dynamo, torch._inductor.standalone_compile, transformers
from transformers import GPT2LMHeadModel, ViTModel" > /dev/null 2>&1 || true

# The GPU round-trip tests first: correctness on this device (torch 2.11: the builtins fix is live) matters more
# than the numbers, and they are quick.
if [ "${GPU_TESTS:-1}" = 1 ] && "$PYTHON" -c "import pytest" 2>/dev/null && [ "$(remaining)" -gt 60 ]; then
  # Exit code 5 means "no tests were collected": not a failure here.
  # shellcheck disable=SC2086 # GPU_TESTS_PATHS is a list of paths
  step pytest_gpu "${GPU_TESTS_TIMEOUT_S:-240}" "$PYTHON" -m pytest ${GPU_TESTS_PATHS:-tests/gpu} -m gpu -q -s -p no:cacheprovider \
    -p no:warnings -o addopts="" --durations=0 > "$OUT/pytest-gpu.txt" 2>&1
  echo "pytest -m gpu exit code $? (5 = no gpu tests)"
fi

# The VLM example (Qwen2-VL: vision tower and language model, two artifacts) on this device, as tests/test_examples.py
# runs it on CPU: twice, each process with its own empty Inductor/Triton caches and one torchkiln cache; the second
# must hit. Its JSON lines go into logs/vlm/ (the tarball) and a digest per run into summary.txt: no loose file, the
# 8-file limit is spent on the bench results. VLM=0 skips it; VLM_TIMEOUT_S (180) bounds each run.
if [ "${VLM:-1}" = 1 ] && [ "$(remaining)" -gt 300 ]; then
  vlm_device=$DEVICE
  if [ "$vlm_device" = cuda ] && ! "$PYTHON" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    vlm_device=cpu  # no CUDA here after all: still check the round trip
  fi
  mkdir -p "$OUT/logs/vlm" "$WORK/vlm"
  for i in 1 2; do
    TORCHINDUCTOR_CACHE_DIR="$WORK/vlm/inductor-$i" TRITON_CACHE_DIR="$WORK/vlm/triton-$i" \
      step "vlm_serve_$i" "${VLM_TIMEOUT_S:-180}" "$PYTHON" examples/vlm_serve.py --device "$vlm_device" \
      --cache "$WORK/vlm/tkcache" --json > "$OUT/logs/vlm/run-$i.log" 2>&1
    # The JSON result is the log's last line that starts with "{": the step's trace lines (set -x) come after it.
    grep '^{' "$OUT/logs/vlm/run-$i.log" | tail -n 1 | "$PYTHON" -c "
import json, sys
try:
    r = json.loads(sys.stdin.read())
except ValueError:
    print('vlm_serve run $i: no JSON result (see logs/vlm/run-$i.log)')
else:
    print('vlm_serve run $i:', r['device'], 'hit=%s' % r['hit'], 'matches_eager=%s' % r['matches_eager'],
          'max_diff=%.1e' % r['max_diff_vs_eager'], 'first_output_s=%s' % r['first_output_seconds'])
" >> "$OUT/summary.txt" || true
  done
fi

# Where a hit spends its time on this device, after and (with PROFILE_BEFORE_SRC) before this checkout's changes.
# Both share one work dir: one machine, one install memo; the second profile's "miss" finds the first's artifact.
if [ -n "${PROFILE_MODEL:-}" ]; then
  for which in after before; do
    src="$PWD/src"
    if [ "$which" = before ]; then
      [ -n "${PROFILE_BEFORE_SRC:-}" ] || continue
      src="$PROFILE_BEFORE_SRC"
    fi
    [ "$(remaining)" -gt 150 ] || { echo "budget: skipping profile-$which" | tee -a "$OUT/summary.txt"; continue; }
    step "profile_$which" "${PROFILE_TIMEOUT_S:-120}" "$PYTHON" benchmarks/profile_hit.py --model "$PROFILE_MODEL" \
      --device "$DEVICE" --reps "${PROFILE_REPS:-1}" --workdir "$WORK/profile" --src "$src" \
      --out "$OUT/profile-$which.json" > "$OUT/profile-$which.txt" 2>&1 || true
  done
fi

for model in $MODELS; do
  left=$(remaining)
  if [ "$left" -lt 60 ]; then
    echo "budget spent: skipping $model" | tee -a "$OUT/summary.txt"
    continue
  fi
  # Each model gets its share of what is left, so the last one is not starved by the first.
  n_left=0; seen=0
  for m in $MODELS; do [ "$m" = "$model" ] && seen=1; [ $seen -eq 1 ] && n_left=$((n_left + 1)); done
  share=$((left / n_left))
  args=(-m torchkiln bench --model "$model" --device "$DEVICE" --reps "$REPS" --calls "$CALLS"
        --timeout "$PHASE_TIMEOUT_S" --deadline "$((share - 15))" --workdir "$WORK/$model"
        --out "$OUT/bench-$model.json")
  [ -n "$PHASES" ] && args+=(--phases "$PHASES")
  [ -n "${ONCE:-}" ] && args+=(--once "$ONCE")
  "$PYTHON" -c "import matplotlib" 2>/dev/null && args+=(--plot "$OUT/bench-$model.png")
  if "$PYTHON" -c "import rich" 2>/dev/null; then
    step "bench_$model" "$share" "$PYTHON" "${args[@]}" > "$OUT/bench-$model.txt"
  else
    # rich (the CLI's tables) is missing: drive the harness directly; JSON only.
    echo "rich is not installed: running the harness without the CLI" | tee "$OUT/bench-$model.txt"
    step "bench_$model" "$share" "$PYTHON" -c '
import json, os, sys
from torchkiln.bench import BenchConfig, run_bench
model, device, reps, calls, timeout, deadline, workdir, out, phases, once = sys.argv[1:11]
def write(results):
    with open(out + ".tmp", "w") as f:
        json.dump(results, f, indent=2, default=str)
    os.replace(out + ".tmp", out)
extra = {"phases": phases.split(",")} if phases else {}
extra["once"] = [p for p in once.split(",") if p]
config = BenchConfig(models=[model], device=device, reps=int(reps), calls=int(calls), timeout_s=float(timeout),
                     deadline_s=float(deadline), workdir=workdir, **extra)
write(run_bench(config, progress=print, on_update=write))
' "$model" "$DEVICE" "$REPS" "$CALLS" "$PHASE_TIMEOUT_S" "$((share - 15))" "$WORK/$model" \
      "$OUT/bench-$model.json" "$PHASES" "${ONCE:-}"
  fi
  cat "$OUT/bench-$model.txt"
  # The same as Markdown tables, ready for BENCHMARKS.md.
  "$PYTHON" -c "import json, sys; from torchkiln.bench.report import to_markdown; print(to_markdown(json.load(open(sys.argv[1]))))" \
    "$OUT/bench-$model.json" > "$OUT/bench-$model.md" || true
  # Phase logs and records come back too (small text files), for whatever failed.
  mkdir -p "$OUT/logs/$model"
  (cd "$WORK/$model/$model" && find . \( -name '*.log' -o -name '*.json' \) -exec install -D -m 644 {} "$OUT/logs/$model/{}" \;) || true
done


rm -rf "$WORK"
echo "total seconds $(($(date +%s) - START))" >> "$OUT/summary.txt"
cat "$OUT/summary.txt"
# At most 8 files come back from the device machine: keep the results loose, pack everything else.
(cd "$OUT" && tar czf /tmp/torchkiln-logs.tar.gz --exclude='bench-*.json' --exclude='bench-*.md' \
  --exclude=summary.txt --exclude=pytest-gpu.txt --exclude='profile-*.txt' . && find . -mindepth 1 \
  ! -name 'bench-*.json' ! -name 'bench-*.md' ! -name summary.txt ! -name pytest-gpu.txt ! -name 'profile-*.txt' \
  -delete && mv /tmp/torchkiln-logs.tar.gz .) || true
ls "$OUT"/bench-*.json >/dev/null 2>&1
