#!/usr/bin/env bash
# Every figure of README "Speed", one command each, outputs under runs/speed/ (2 threads; the
# load average is printed by each command). Run on a quiet machine:  bash bench/run_speed.sh
set -u
cd "$(dirname "$0")/.."
out=runs/speed
mkdir -p "$out"
export OMP_NUM_THREADS=2
R=${REPEAT:-15}
SAM_R=${SAM_REPEAT:-5}
run() { echo "\$ $*" | tee -a "$out/log.txt"; uptime | tee -a "$out/log.txt"; "$@" 2>&1 | tee -a "$out/log.txt"; }
run python -m prune_viz analyze examples/mixed.png --out "$out/random" --method random --layers 6 --rate 0.5 --repeat "$R" --no-measure
run python -m prune_viz analyze examples/mixed.png --out "$out/evit" --method evit --repeat "$R" --no-measure
run python -m prune_viz analyze examples/mixed.png --out "$out/lvtp" --method lvtp --repeat "$R" --no-measure
run python -m prune_viz analyze examples/mixed.png --out "$out/dtop" --method dtop --repeat "$R" --no-measure
run python -m prune_viz analyze examples/mixed.png --out "$out/matp" --backbone demo_matp --method matp --repeat "$R" --no-measure
run python -m prune_viz analyze examples/mixed.png --out "$out/timm" --backbone timm:vit_base_patch16_224 --input-size 512 --method random --layers 3 --rate 0.5 --repeat 7 --no-measure
run python -m prune_viz analyze examples/mixed.png --out "$out/swin4" --backbone timm:swin_tiny_patch4_window7_224 --input-size 512 --method random --layers 4 --rate 0.5 --repeat 7 --no-measure
run python -m prune_viz analyze examples/mixed.png --out "$out/swin5" --backbone timm:swin_tiny_patch4_window7_224 --input-size 512 --method random --layers 5 --rate 0.5 --repeat 7 --no-measure
run python -m prune_viz analyze examples/mixed.png --out "$out/demo_swin_lvtp" --backbone demo_swin --method lvtp --repeat 7 --no-measure
run python -m prune_viz analyze examples/mixed.png --out "$out/demo_swin_dtop" --backbone demo_swin --method dtop --layers 2,4,6,8 --repeat 7 --no-measure
if [ -f runs/sam_vit_b_random.pth ]; then  # python -c "...torch.save(build_sam('sam_vit_b', random_weights=True).sam.state_dict(), ...)"
  run python -m prune_viz analyze examples/mixed.png --out "$out/sam" --backbone sam_vit_b --checkpoint runs/sam_vit_b_random.pth --method random --layers 3 --rate 0.5 --repeat "$SAM_R" --no-measure
fi
run python bench/bench_overhead.py --threads 2 --reps 5 --sam-reps 3
run python bench/bench_overhead.py --only demo --threads 1 --reps 5
run python bench/bench_decide_threads.py --reps 21
run python bench/bench_browser.py --repeat 5 --threads 2
