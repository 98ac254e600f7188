#!/usr/bin/env bash
# One-go GPU check on a CUDA machine (not yet run on one: the kernels were verified on CPU only).
#   1. the CUDA tests (pytest -k cuda: fast attention and operators vs the reference on CUDA, the Triton
#      kernels vs torch_impl on CUDA)
#   2. the attention kernel alone, triton_impl vs torch_impl (scripts/gpu_kernel_bench.py)
#   3. `acmix-bench speed --device cuda` at the four issue-3 shapes, stride 1 and 2, fwd+bwd, per fast
#      backend (torch, and triton once modules/_fast accepts ACMIX_FAST_BACKEND=triton), printed as one table.
# Usage: bash scripts/gpu_check.sh [outdir]   (default $OUT, else ./gpu_check_out). Writes 4 files there:
# pytest_cuda.txt, kernel_bench.txt, speed_cuda.csv, speed_errors.txt. Aim: well under 8 minutes on an H100.
# Python: PY, else .venv/bin/python, else python3 (the device image's python3 holds torch and triton).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
PY=${PY:-.venv/bin/python}; [ -x "$PY" ] || PY=python3
OUTDIR=${1:-${OUT:-gpu_check_out}}
mkdir -p "$OUTDIR"
TMP=$(mktemp -d)
SHAPES=(8,64,56,56 8,128,28,28 8,256,14,14 32,64,32,32)
status=0

echo "== device"; nvidia-smi -L || { echo "no nvidia-smi: not a GPU machine"; exit 2; }
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name())" || exit 2

echo "== CUDA tests (pytest -k cuda)"
timeout 240 "$PY" -m pytest -q -rs -p no:cacheprovider -k cuda tests/test_fast_triton.py \
  tests/test_fast_local_attention.py tests/test_operators.py tests/test_speed.py 2>&1 | tee "$OUTDIR/pytest_cuda.txt" | tail -25
[ "${PIPESTATUS[0]}" = 0 ] || status=1

echo "== attention kernel alone (float32, k_a 7, 4 heads; triton vs torch_impl)"
timeout 180 "$PY" scripts/gpu_kernel_bench.py 2>&1 | tee "$OUTDIR/kernel_bench.txt"
[ "${PIPESTATUS[0]}" = 0 ] || status=1

echo "== acmix-bench speed --device cuda (ACmix block, stride 1 and 2, fwd+bwd; peak memory for triton only)"
csv="$OUTDIR/speed_cuda.csv"; errs="$OUTDIR/speed_errors.txt"; : > "$csv"; : > "$errs"
for backend in torch triton; do
  for shape in "${SHAPES[@]}"; do
    tmp="$TMP/speed.csv"; rm -f "$tmp"
    mem=(--no-memory); [ "$backend" = triton ] && mem=()   # the peak-memory children each start CUDA
    if ACMIX_FAST_BACKEND=$backend timeout 240 "$PY" -m bench.cli speed --op acmix --device cuda --shape "$shape" \
         --stride 1,2 --pass fwd+bwd --rounds 2 --min-run-time 0.5 "${mem[@]}" --format csv --output "$tmp" \
         > /dev/null 2> "$TMP/err"; then
      if [ -s "$csv" ]; then tail -n +2 "$tmp" >> "$csv"; else cat "$tmp" > "$csv"; fi
    else
      { echo "backend $backend shape $shape failed:"; tail -5 "$TMP/err"; } | tee -a "$errs"
      [ "$backend" = torch ] && status=1
    fi
  done
done
if [ -s "$csv" ]; then
  "$PY" - "$csv" <<'PYEOF'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
cols = ["backend", "impl", "pass", "shape", "stride", "median_ms", "peak_mem_mb", "x_conv", "speedup_vs_ref",
        "mem_vs_ref", "x_stride1"]
w = {c: max(len(c), *(len(r.get(c) or "-") for r in rows)) for c in cols}
print("  ".join(c.rjust(w[c]) for c in cols))
for r in rows:
    print("  ".join((r.get(c) or "-").rjust(w[c]) for c in cols))
PYEOF
fi
rm -rf "$TMP"
echo "== done (status $status); files in $OUTDIR"
exit $status
