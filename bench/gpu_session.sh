#!/usr/bin/env bash
# One lent-GPU session's measurements, in priority order, each part under its own timeout
# so a slow part cannot starve the rest. Results go to $OUT (or ./gpu-results): each part's
# log, and its bench/harness.py JSON (copy those to bench/results/ and run
# `python -m bench.render` to put them in bench/README.md's table). From the repository root:
#   bash bench/gpu_session.sh
# Wheels for what the GPU image lacks (diffusers, pydantic, ...) may sit in .whl/. The
# sweep-flow parts need prefect and mlflow too (with their dependencies the lent H200 lacks):
# without them those parts fail and the others still run.
set -u
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
PY=${PY:-python3}

install_missing() {  # module wheel-glob...
  local module=$1; shift
  $PY -c "import $module" 2>/dev/null || $PY -m pip install -q --no-deps --no-index "$@"
}
if [ -d .whl ]; then
  ls .whl/prefect-*.whl >/dev/null 2>&1 && { $PY -m pip install -q --no-index --no-deps \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:.; }
  install_missing diffusers .whl/diffusers-*.whl
  install_missing importlib_metadata .whl/importlib_metadata-*.whl
  install_missing pydantic .whl/pydantic-*.whl .whl/pydantic_core-*.whl \
    .whl/annotated_types-*.whl .whl/typing_inspection-*.whl
fi
$PY -c "import torch, diffusers, transformers, pytorch_lightning, peft, pydantic
print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers',
      transformers.__version__, 'lightning', pytorch_lightning.__version__,
      torch.cuda.get_device_name())" 2>&1 | tee "$OUT/versions.txt"

WORK=/tmp/easel-bench
mkdir -p "$WORK"
BUDGET=${BUDGET:-480}  # seconds for all parts together; each part gets at most what is left
STARTED=$SECONDS
part() {  # name seconds command...
  local name=$1 seconds=$2; shift 2
  local left=$((BUDGET - (SECONDS - STARTED)))
  [ "$left" -lt "$seconds" ] && seconds=$left
  [ "$seconds" -lt 20 ] && { echo "=== $name skipped: out of time"; return; }
  echo "=== $name ($(date +%T), up to ${seconds}s)"
  timeout "$seconds" "$@" > "$OUT/$name.txt" 2>&1
  echo "rc=$?" >> "$OUT/$name.txt"
  grep -v -E "Warning|warn|deprecat|^\s*$" "$OUT/$name.txt" | tail -n 40
}

# In priority order (each part under its own timeout; BUDGET 480 s = 8 minutes in all):
# 1. the whole sweep flow (Prefect flow, MLflow run, PNGs, records) with the fast path and
#    batch_size auto against a bare batched eager diffusers loop, in one run (bench/sweep.py;
#    the MLflow figures: images/s, TFLOP an image, MFU); 2. DreamBooth 1+1, 16-mixed: the
#    baseline loop, easel eager, easel with regional compile (start-up, steps/s, memory);
# 3. each fast-path setting against eager (speed, pixel differences, batch invariance);
# 4. the flow on the eager path (what the flow itself costs against the bare loop).
SIZE=${SIZE:-sd15} RES=${RES:-512} ROWS=${ROWS:-64}  # SIZE=tiny RES=32: a CPU dry run
MODEL="$WORK/model-$SIZE"
export MLFLOW_TRACKING_URI="sqlite:///$WORK/mlflow.db"
FAST='{"compile": "regional", "channels_last": true}'
part build_model 90 $PY -c "from easel.models.testing.random_pipelines import build_random_sd
build_random_sd('$MODEL', size='$SIZE')"
part sweep_flow_fast 150 $PY -m bench.sweep --model "$MODEL" --rows $ROWS --batch-size auto \
  --performance "$FAST" --no-batch1 --skip-process --results "$OUT" --label fast-$SIZE
part dreambooth_fp16_b1 150 $PY -m bench.dreambooth --model "$MODEL" --resolution $RES \
  --steps 40 --precision 16-mixed --variants baseline,easel,easel-regional --workdir "$WORK/db" \
  --results "$OUT" --label $SIZE
part fast_path 120 $PY -m bench.fast_path --model "$MODEL" --size $RES --repeats 2 \
  --settings eager channels_last "compile regional" "compile regional + channels_last" \
  "vae bfloat16" "compile full + channels_last" --results "$OUT" --label $SIZE
part sweep_flow_eager 90 $PY -m bench.sweep --model "$MODEL" --rows $ROWS --batch-size 8 \
  --no-batch1 --skip-process --results "$OUT" --label eager-$SIZE
echo "=== done ($(date +%T))"
