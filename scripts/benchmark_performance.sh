#!/usr/bin/env bash
# Regenerates docs/performance.md's figures on this machine: mmseg float32, mmseg AMP (+amp:
# autocast on mmseg's own model) and ours --fast side by side, each table one interleaved run,
# JSON and markdown in docs/results/perf_*. Run it alone on an idle machine (about 40 minutes
# on 2 cores); the demo rows need the trained demos (ann-seg demo; ann-seg demo --fast
# --work-dir work_dirs/demo_fast).
#
#   bash scripts/benchmark_performance.sh [inference|train|folder|modes ...]   (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
PATH=$PWD/.venv/bin:$PATH
THREADS=${THREADS:-2}
OUT=docs/results
ANN=ann/ann_r101-d8_4xb2-80k_cityscapes-512x1024.py
mkdir -p "$OUT"
run() {  # name, command...
  local name=$1
  shift
  echo "[benchmark_performance] $name: $*" >&2
  "$@" | tee "$OUT/perf_$name.md"
}
for part in ${@:-inference train folder modes}; do
  case $part in
    inference)
      run inference_r101_512x1024 ann-seg benchmark mmseg::$ANN mmseg::$ANN+amp ann_seg::$ANN+fast \
        ann_seg::$ANN+fuse+cl --shape 512 1024 --repeat 3 --warmup 1 --threads "$THREADS" --no-flops --no-progress \
        --json "$OUT/perf_inference_r101_512x1024.json" ;;
    train)
      for shape in "256 512" "512 1024"; do
        name=train_r101_${shape/ /x}
        run "$name" ann-seg benchmark mmseg::$ANN mmseg::$ANN+amp ann_seg::$ANN+fast \
          ann_seg::$ANN+fast+cp --mode train --shape $shape --repeat 3 --warmup 1 \
          --threads "$THREADS" --no-flops --no-progress --json "$OUT/perf_$name.json"
      done ;;
    folder)
      run folder_r101_512x1024 python -m research.folder_throughput ann_seg::$ANN --speed \
        --size 512 1024 --images 10 --rounds 2 --threads "$THREADS" --no-progress \
        --cfg-options "test_pipeline.1.scale=(1024,512)" \
        "test_dataloader.dataset.pipeline.1.scale=(1024,512)" \
        --work-dir work_dirs/perf_folder --json "$OUT/perf_folder_r101_512x1024.json" ;;
    modes)
      run modes_demo ann-seg benchmark-inference ann_seg::demo/ann_r18-d8_1xb8-600it_synthetic-128x256.py \
        work_dirs/demo/iter_600.pth data/synthetic_long_range/leftImg8bit/val --recursive \
        --modes fp32 fuse amp bf16 fast --threads "$THREADS" --no-progress \
        --json "$OUT/perf_modes_demo.json"
      python - <<'EOF' | tee "$OUT/perf_demo_fast_miou.md"
import json
plain = json.load(open("work_dirs/demo/summary.json"))["metrics"]["mIoU"]
fast = json.load(open("work_dirs/demo_fast/summary.json"))["metrics"]["mIoU"]
print(f"| demo | float32 | --fast | difference |\n|---|--:|--:|--:|\n"
      f"| mIoU | {plain:.2f} | {fast:.2f} | {fast - plain:+.2f} |")
EOF
      ;;
    *) echo "usage: scripts/benchmark_performance.sh [inference|train|folder|modes ...]" >&2; exit 2 ;;
  esac
done
