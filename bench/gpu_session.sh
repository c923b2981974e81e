#!/usr/bin/env bash
# The one prepared GPU session (issue 14): the CUDA tests, then bench/bench_gpu.py, every output kept in "$OUT".
#
# Two steps, from the repository root:
#   bash bench/gpu_session.sh --prepare   # HERE, with PyPI: the wheels the device lacks into .whl/ (.gitignore'd)
#   device run: carry [".whl"], timeout_s 600, command "bash bench/gpu_session.sh"
#
# Assumptions (the lent H200's image, docs of the device tool, 2026-11): python3 there already holds a CUDA torch
# (2.11), transformers 5.x, safetensors, tokenizers, scipy, regex, Pillow, numpy, pytest and pytest-timeout, and
# nothing can be downloaded there. So comfykit runs from this checkout through PYTHONPATH (no `pip install -e`),
# and what the image lacks (diffusers, torchsde + trampoline, kornia + kornia_rs, websocket-client, the template
# packages) travels as wheels in .whl/. comfyui-workflow-templates 0.1.95 is 85 MB of pictures: --prepare keeps
# only its JSON files, as a package folder .whl/site/comfyui_workflow_templates. Where PyPI can be reached (a Colab
# or a cloud VM), no .whl/ is needed: the script pip-installs what fails to import, torch==2.13.0 included.
#
# Time: at most ~10 minutes in all (150 s of tests, 420 s of benchmark, the rest setup), inside the device tool's
# 600 s limit per call; every step's status goes to "$OUT/status.txt", and the script exits 0 whatever fails.
set -u
OUT="${OUT:-./gpu_out}"
WHEELS=.whl
PY=${PYTHON:-python3}

if [ "${1:-}" = "--prepare" ]; then
    set -e
    mkdir -p "$WHEELS/site"
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$WHEELS" diffusers==0.42.0 torchsde==0.2.6 trampoline==0.1.2 kornia==0.9.0 kornia_rs==0.2.0 \
        websocket-client comfyui-workflow-templates-json==0.1.123
    # the 0.3.64-era templates as JSON alone, read from the package installed here (the project venv has it)
    src=$("$PY" -c "import comfyui_workflow_templates as m, os; print(os.path.dirname(m.__file__))")
    mkdir -p "$WHEELS/site/comfyui_workflow_templates/templates"
    cp "$src/__init__.py" "$WHEELS/site/comfyui_workflow_templates/"
    cp "$src"/templates/*.json "$WHEELS/site/comfyui_workflow_templates/templates/"
    du -sh "$WHEELS"
    echo "prepared: run the device with carry [\"$WHEELS\"] and command \"bash bench/gpu_session.sh\""
    exit 0
fi

mkdir -p "$OUT"
LOG="$OUT/session.log"
: > "$OUT/status.txt"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

step() {  # step NAME TIMEOUT_S COMMAND...: run it with its output teed to $OUT/NAME.log, record its exit status
    local name=$1 limit=$2
    shift 2
    echo "=== $name ($(date -u +%H:%M:%S) UTC, at most ${limit}s): $*" | tee -a "$LOG"
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log" | tee -a "$LOG" > /dev/null
    local rc=${PIPESTATUS[0]}
    echo "$name rc=$rc$([ "$rc" = 124 ] && echo ' (timed out)')" | tee -a "$OUT/status.txt" "$LOG"
}

{
    echo "=== environment ($(date -u))"
    nvidia-smi || echo "nvidia-smi failed"
    "$PY" -c "import sys, torch; print('python', sys.version.split()[0]); print('torch', torch.__version__, \
'cuda', torch.version.cuda, 'available', torch.cuda.is_available()); print(torch.cuda.get_device_name(0) \
if torch.cuda.is_available() else 'no CUDA device')"
} 2>&1 | tee -a "$LOG"

# dependencies: carried wheels first, else PyPI (only where it can be reached)
if [ -d "$WHEELS" ]; then
    step deps 120 bash -c "$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site $WHEELS/*.whl"
    export PYTHONPATH="$PYTHONPATH:/tmp/site:$PWD/$WHEELS/site"
fi
CHECK="import comfykit, torch, diffusers, transformers, torchsde, kornia, safetensors, pytest_timeout, \
comfyui_workflow_templates_json"
if ! "$PY" -c "$CHECK" 2>/dev/null; then
    "$PY" -c "import torch" 2>/dev/null || TORCH="torch==2.13.0"
    step pip 240 "$PY" -m pip install -q --retries 1 --timeout 15 ${TORCH:-} -e ".[engine]" pytest pytest-timeout \
        comfyui-workflow-templates-json comfyui-workflow-templates==0.1.95
fi
"$PY" -c "$CHECK; print('imports ok: comfykit from', comfykit.__file__, '| diffusers', diffusers.__version__, \
'| transformers', transformers.__version__)" 2>&1 | tee -a "$LOG" "$OUT/status.txt"

# the GPU tests (pytest's own addopts need nbval, which the device lacks); --maxfail 3 rather than -x: a first
# device mismatch should not hide the next ones in a session that may not come again
step pytest 150 "$PY" -m pytest -o addopts="" -p no:cacheprovider -m gpu -q -rfEs --maxfail 3 --timeout 120 \
    --continue-on-collection-errors --junitxml "$OUT/junit.xml" tests/engine
# the benchmark table (docs/benchmarks.md's GPU section is written from its output by hand)
step bench 420 "$PY" bench/bench_gpu.py --minutes 6 --no-append

echo "=== done ($(date -u))" | tee -a "$LOG"
cat "$OUT/status.txt"
exit 0
