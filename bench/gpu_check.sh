#!/usr/bin/env bash
# Everything that needs a GPU, in one go: build the CUDA extension, run the GPU tests, run the benchmarks,
# print a short table last. Run from the repository root on a CUDA machine:  bash bench/gpu_check.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
quick=${1:-}
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(), torch.__version__)"
pip install -q --no-build-isolation --no-deps -e . 2>&1 | tail -n 3
python -m fused_diffusion backends
FUSED_DIFFUSION_REQUIRE_EXT=1 python -m pytest -q -m gpu
python -m pytest -q -x tests/test_solvers.py tests/test_graph.py
if [ "$quick" = "--quick" ]; then
  python bench/bench_ops.py --quick
  python bench/bench_loop.py --models ddpm-cifar10 --batches 1 --reps 3
else
  python bench/bench_ops.py
  python bench/bench_loop.py --models ddpm-cifar10
  python bench/bench_loop.py --models sd15
fi
python - <<'PY'
import csv, glob
for path in sorted(glob.glob("bench/results/loop_*.csv")):
    print(path)
    for r in csv.DictReader(open(path)):
        print(f"  {r['model']:<13}{r['batch']:>5}  {r['method']:<18}{float(r['ms']):>10.2f} ms  vs eager {r['vs_eager']:>8}"
              f"  vs reduce-overhead {r['vs_reduce_overhead']:>8}  overhead% {r['loop_overhead_pct']:>6}  peak MiB {r['peak_alloc_mib']}")
PY
