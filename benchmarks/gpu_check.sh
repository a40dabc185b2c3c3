#!/usr/bin/env bash
# jaxscale GPU check: one script, < 8 minutes on one H200. Anyone with an NVIDIA GPU can run it; CI never does.
#
#   bash benchmarks/gpu_check.sh            # the real check (needs a CUDA-enabled JAX, see "Python" below)
#   bash benchmarks/gpu_check.sh --smoke    # tiny sizes on whatever backend is there (tests this script on CPU)
#
# Writes under $OUT (default ./gpu_out) exactly three files:
#   gpu_check.json  every step's JSON result (or its error), keyed by step name, plus the environment
#   gpu_check.log   every step's command line, stderr and timing
#   summary.txt     one line per step: the figures to record, each with the device named
#
# Steps (each under its own `timeout`, so one failure does not lose the rest; a global deadline,
# DEADLINE_S, default 450 s, skips what no longer fits): environment; `jaxscale bench throughput` for
# the CNN (32 seeds, auto strategy) in bf16 and fp32; `jaxscale bench experiment
# configs/cnn_cifar10.toml --json`; `jaxscale bench norms --model cnn --dataset cifar10 --json`;
# ResNet-18 and ViT (8 seeds, vmap) in bf16 and fp32 — all on CIFAR-10 shapes.
#
# Python: $PYTHON if set, else python3. If its JAX has no GPU backend, a venv ($VENV, default
# /tmp/jaxscale-gpu-venv, with the system packages visible) gets CUDA JAX: from wheels carried in
# ./.whl if that folder exists (pip --no-index), else from the package registry (jax[cuda12]).
# jaxscale itself runs from this checkout (PYTHONPATH), so nothing of it needs installing.
set -u
SMOKE=0
for a in "$@"; do
  case "$a" in
    --smoke) SMOKE=1 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $a (use --smoke or nothing)" >&2; exit 2 ;;
  esac
done

REPO="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${OUT:-./gpu_out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
LOG="$OUT/gpu_check.log"
: > "$LOG"
START=$(date +%s)
# seconds for the whole script (8 minutes on the GPU machine; a CPU smoke run gets longer)
if [ "$SMOKE" = 1 ]; then DEADLINE=${DEADLINE_S:-1200}; else DEADLINE=${DEADLINE_S:-450}; fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# no preallocation of 75 % of the GPU: a run sizes its vmapped seed groups from the device's free
# memory (XLA's memory analysis of its programs against memory_stats)
export XLA_PYTHON_CLIENT_PREALLOCATE=false

log() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$LOG"; }

# ---------------------------------------------------------------- Python with a GPU-enabled JAX
PY="${PYTHON:-python3}"
has_gpu() { "$1" -c 'import jax, sys; sys.exit(0 if jax.default_backend() == "gpu" else 1)' >/dev/null 2>&1; }
if [ "$SMOKE" = 0 ] && ! has_gpu "$PY"; then
  VENV="${VENV:-/tmp/jaxscale-gpu-venv}"
  log "python: $PY has no GPU JAX; making $VENV"
  "$PY" -m venv --system-site-packages "$VENV" >>"$LOG" 2>&1
  PY="$VENV/bin/python"
  if [ -d "$REPO/.whl" ]; then
    log "installing carried wheels from .whl/ (no index)"
    timeout -k 5 180 "$PY" -m pip install -q --no-index --no-deps "$REPO"/.whl/*.whl >>"$LOG" 2>&1
  else
    log "installing jax[cuda12] from the package registry"
    timeout -k 5 240 "$PY" -m pip install -q "jax[cuda12]" flax optax >>"$LOG" 2>&1
  fi
  has_gpu "$PY" || log "WARNING: still no GPU backend; the steps below run on $("$PY" -c 'import jax; print(jax.default_backend())' 2>/dev/null)"
fi

# ---------------------------------------------------------------- sizes
if [ "$SMOKE" = 1 ]; then
  # every step and option as in the real check, on 8x8 digits with tiny models (CPU-fast)
  DATA=digits; CNN_SEEDS=2; OTHER_SEEDS=2; P=64; BS=32; REPEATS=1; PRESET="--preset tiny"
  EXP_CFG="$WORK/cnn_cifar10_smoke.toml"
  sed -e 's/^preset = .*/preset = "tiny"/' -e 's/^dataset = .*/dataset = "digits"/' -e 's/^P = .*/P = [64, 128]/' \
      -e 's/^seeds = .*/seeds = 2/' -e 's/^epochs = .*/epochs = 3/' -e 's/^batch_size = .*/batch_size = 32/' \
      "$REPO/configs/cnn_cifar10.toml" > "$EXP_CFG"
  EXP_ARGS="--P-measure 64"
  NORM_ARGS="--seeds 2 --steps 1 --repeats 1"
else
  DATA=cifar10; CNN_SEEDS=32; OTHER_SEEDS=8; P=512; BS=128; REPEATS=3; PRESET=""
  EXP_CFG="$REPO/configs/cnn_cifar10.toml"
  EXP_ARGS="--P-measure 1024"
  NORM_ARGS="--seeds 32"
fi

# ---------------------------------------------------------------- steps
STEPS=()
run_step() {  # run_step NAME TIMEOUT_S COMMAND...  (stdout must be one JSON document)
  local name="$1" limit="$2"; shift 2
  local left=$(( DEADLINE - ($(date +%s) - START) ))
  STEPS+=("$name")
  if [ "$left" -lt 20 ]; then
    log "SKIP $name: ${left}s left of the ${DEADLINE}s budget"
    echo "{\"skipped\": \"${left}s left of the ${DEADLINE}s budget\"}" > "$WORK/$name.json"
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  log "RUN  $name (timeout ${limit}s): $*"
  local t0=$(date +%s)
  timeout -k 10 "$limit" "$@" > "$WORK/$name.out" 2> "$WORK/$name.err"
  local rc=$?
  cat "$WORK/$name.err" >> "$LOG"
  if [ $rc -eq 0 ] && "$PY" -c 'import json,sys; json.load(open(sys.argv[1]))' "$WORK/$name.out" 2>/dev/null; then
    cp "$WORK/$name.out" "$WORK/$name.json"
    log "OK   $name in $(( $(date +%s) - t0 ))s"
  else
    local why="exit $rc"; [ $rc -eq 124 ] && why="timed out after ${limit}s"
    log "FAIL $name: $why"
    "$PY" - "$WORK/$name.err" "$why" > "$WORK/$name.json" <<'EOF'
import json, sys
tail = open(sys.argv[1], errors="replace").read().strip().splitlines()[-15:]
print(json.dumps({"error": sys.argv[2], "stderr_tail": tail}))
EOF
  fi
}

JS=("$PY" -m jaxscale bench)
run_step env 60 "$PY" - <<'EOF'
import json, os, platform, subprocess
import jax
try:
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=20).stdout.strip()
except (OSError, subprocess.SubprocessError):
    smi = None
print(json.dumps({"backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
                  "device_kind": jax.devices()[0].device_kind, "jax": jax.__version__,
                  "python": platform.python_version(), "nvidia_smi": smi, "cpu_count": os.cpu_count()}))
EOF
# In order of importance (the deadline skips the tail): the CNN the targets are about, the projection
# of the full paper experiment, the norm overhead, then ResNet-18 / ViT timing only vmap (their
# compilation is slow).
for prec in bf16 fp32; do
  run_step "throughput_cnn_$prec" 130 "${JS[@]}" throughput --model cnn --dataset $DATA $PRESET \
    --seeds $CNN_SEEDS --P $P --batch-size $BS --precision $prec --repeats $REPEATS --json
done
run_step experiment_cnn_cifar10 120 "${JS[@]}" experiment "$EXP_CFG" $EXP_ARGS --json
run_step norms_cnn 60 "${JS[@]}" norms --model cnn --dataset $DATA $NORM_ARGS --json
for prec in bf16 fp32; do
  for model in resnet vit; do
    run_step "throughput_${model}_$prec" 80 "${JS[@]}" throughput --model $model --dataset $DATA $PRESET \
      --seeds $OTHER_SEEDS --P $P --batch-size $BS --precision $prec --repeats $REPEATS \
      --ensemble vmap --strategies vmap --json
  done
done

# ---------------------------------------------------------------- combine + summary
"$PY" - "$WORK" "$OUT" "$(( $(date +%s) - START ))" "$SMOKE" "${STEPS[@]}" <<'EOF'
import json, os, sys
work, out, elapsed, smoke, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1", sys.argv[5:]
res = {s: json.load(open(os.path.join(work, s + ".json"))) for s in steps}
res["_meta"] = {"elapsed_s": elapsed, "smoke": smoke}
tmp = os.path.join(out, ".gpu_check.json.tmp")
with open(tmp, "w") as f:
    json.dump(res, f, indent=1)
os.replace(tmp, os.path.join(out, "gpu_check.json"))
lines = [f"jaxscale gpu_check ({'smoke' if smoke else 'full'}) in {elapsed}s on "
         f"{res.get('env', {}).get('device_kind', '?')} (jax {res.get('env', {}).get('jax', '?')})"]
ok = 0
for s in steps:
    r = res[s]
    if "error" in r or "skipped" in r:
        lines.append(f"  {s:26s} {'ERROR ' + r['error'] if 'error' in r else 'SKIPPED ' + r['skipped']}")
        continue
    ok += 1
    if s.startswith("throughput"):
        lines.append(f"  {s:26s} one seed {r['img_s_single']:>10,.0f}  sequential {r['img_s_sequential']:>10,.0f}  "
                     f"ensemble {r['img_s_ensemble']:>10,.0f} img/s ({r['ensemble_strategy']}, "
                     f"{r['ensemble_over_sequential']:.2f}x)  MFU {r['mfu']:.1%}  peak {r['peak_flops']:.3g}")
    elif s.startswith("norms"):
        lines.append(f"  {s:26s} step {r['step_s'] * 1e3:.2f} ms, with norms {r['step_with_norms_s'] * 1e3:.2f} ms "
                     f"({r['overhead_fraction']:+.1%}); exact SVD = {r['svd_over_step']:.2f} steps")
    elif s.startswith("experiment"):
        seq = f", one seed at a time {r['projected_sequential_h']:.2f} h" if "projected_sequential_h" in r else ""
        lines.append(f"  {s:26s} projected {r['projected_ensemble_h']:.2f} h ({r['ensemble_strategy']}){seq}")
    else:
        lines.append(f"  {s:26s} {json.dumps(r)[:160]}")
lines.append(f"{ok}/{len(steps)} steps ok")
text = "\n".join(lines) + "\n"
with open(os.path.join(out, "summary.txt"), "w") as f:
    f.write(text)
print(text, end="")
sys.exit(0 if ok == len(steps) else 1)
EOF
