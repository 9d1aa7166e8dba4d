#!/usr/bin/env bash
# The GPU checks of one machine in one go (about 8-10 min on one H100/H200), for a session that
# is lent a GPU for ~15 minutes. Steps run in order of priority and each writes its table under
# OUT (default bench_gpu/) as it finishes, so a run stopped by its time limit keeps what it did;
# OUT/summary.txt lists what ran. TESTS=0 skips the last step (the test files, ~1-2 min).
#
#   bash bench/gpu.sh [OUT]          # on the GPU machine, from the repository root
#   TINY=1 bash bench/gpu.sh [OUT]   # the same steps with tiny models (checks the script on a CPU)
#
# Steps: device and versions; the training step vs a bare PyTorch loop and its MFU (ViT-B/16 x 8
# frames x 224, bf16, text tower frozen, uint8 frames normalised on the GPU, fused AdamW), then
# the same with model.compile; activation memory and peak memory with and without
# model.grad_checkpointing (ViT-B/16 and ViT-L/14, 8 and 16 frames); FSDP on the one GPU through
# configs/accelerate/fsdp.yaml: train, kill, resume, then single-process eval and predict of
# its checkpoint; the whole pipeline from generated 224 px mp4s (PyAV, and torchcodec where
# installed; 14 workers) against the synthetic step rate; the GPU-relevant test files.
set -uo pipefail
out=${1:-bench_gpu}
mkdir -p "$out"
export HF_HUB_OFFLINE=1
if [[ "${TINY:-0}" == 1 ]]; then
  big=tiny; large=tiny_hf.json; large_backbone=hf; batch=4; steps=3; mp=no; frames=4,8
  video_size=64; clips=32; workers=2
else
  big=ViT-B-16; large=ViT-L-14; large_backbone=open_clip; batch=32; steps=30; mp=bf16; frames=8,16
  video_size=224; clips=256; workers=14
fi
decoders=pyav
python -c "import torchcodec" 2>/dev/null && decoders=pyav,torchcodec
status=()
run() {  # run NAME CMD...: tee the output to OUT/NAME.txt, record the exit status
  local name=$1; shift
  echo "== $name: $*" | tee "$out/$name.txt"
  local start=$SECONDS
  "$@" 2>&1 | tee -a "$out/$name.txt"
  local rc=${PIPESTATUS[0]}
  status+=("$name rc=$rc $((SECONDS - start)) s")
}

run device bash -c "nvidia-smi || echo 'no nvidia-smi (CPU)'; python -c \
'import torch, accelerate, open_clip, transformers; print(torch.__version__, accelerate.__version__, open_clip.__version__, transformers.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())'"
run train_step python bench/train_step.py --model "$big" --batch "$batch" --frames 8 \
  --mixed-precision "$mp" --steps "$steps" --text-steps 3
# model.compile (each image block through torch.compile): its own run, the compile time apart
run train_step_compiled python bench/train_step.py --model "$big" --batch "$batch" --frames 8 \
  --mixed-precision "$mp" --steps "$steps" --text-classes 0 --compile
run memory python bench/memory.py --models "open_clip:$big,$large_backbone:$large" \
  --frames "$frames" --batch 8 --repeats 1 --steps 3

# FSDP on one GPU (Accelerate's FSDP 2 with one process): train 8 steps (checkpoints at 4 and
# 8), resume from step 4 and compare steps 5-8 with the uninterrupted run, then evaluate and
# predict on one process from the full model.safetensors alone
data=$out/fsdp_data
run fsdp_data python -c "from vlcofit.data.synthetic.demo import make_demo_dataset; \
make_demo_dataset('$data', per_class_train=2, per_class_val=1)"
common=(--set "datasets.demo.root=$data" --set "output_dir=$out/fsdp_run" --set model.name=tiny
        --set train.steps=8 --set train.save_every=4 --set train.batch_size=4
        --set train.num_workers=2 --set train.eval_every=0 --set train.log_every=1)
if [[ "${TINY:-0}" == 1 ]]; then
  launch=(python -m vlcofit)  # no FSDP on a CPU (vlcofit refuses it): the plain path
else
  launch=(accelerate launch --config_file configs/accelerate/fsdp.yaml --num_processes 1 -m vlcofit)
fi
rm -rf "$out/fsdp_run"
run fsdp_train "${launch[@]}" train demo "${common[@]}"
cp "$out/fsdp_run/metrics.jsonl" "$out/fsdp_metrics_full.jsonl" 2>/dev/null
run fsdp_resume "${launch[@]}" train demo "${common[@]}" \
  --resume "$out/fsdp_run/checkpoints/step_000004"
run fsdp_compare python -c "
import json, sys
def losses(p): return {r['step']: r['train/loss'] for r in map(json.loads, open(p)) if 'train/loss' in r}
a, b = losses('$out/fsdp_metrics_full.jsonl'), losses('$out/fsdp_run/metrics.jsonl')
diff = max(abs(a[s] - b[s]) / abs(a[s]) for s in range(5, 9))
print('steps 5-8, resumed vs uninterrupted: max relative loss difference', diff)
sys.exit(diff > 1e-5)"
run fsdp_eval python -m vlcofit eval --checkpoint "$out/fsdp_run" --out "$out/fsdp_eval"
run fsdp_predict python -m vlcofit predict --checkpoint "$out/fsdp_run" \
  "$data/val/000000.mp4" --labels demo

# the whole pipeline from mp4s vs the synthetic-tensor step (target >= 0.9); ~1 min generating
run pipeline python bench/pipeline.py --model "$big" --batch "$batch" --size "$video_size" \
  --clips "$clips" --decoders "$decoders" --workers "$workers" --steps "$steps" \
  --mixed-precision "$mp" --repeats 1 --data "${TMPDIR:-/tmp}/vlcofit_gpu_pipeline"

[[ "${TESTS:-1}" == 1 ]] && run tests python -m pytest -q -x tests/test_train.py tests/test_strategies.py tests/test_image_towers.py \
  tests/test_fsdp.py

printf '%s\n' "${status[@]}" | tee "$out/summary.txt"
