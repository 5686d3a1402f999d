#!/usr/bin/env bash
# Rebuild the shipped int8 bundle (nanovla/assets/default_bundle) from the shipped default model
# (nanovla/assets/default_model). Run it whenever the default model's weights change, and commit
# both: tests/test_default_bundle.py fails while the bundle was exported from other weights.
#   bash scripts/export_default_bundle.sh                    # 50 parity scenes (~3 min on 2 cores)
#   bash scripts/export_default_bundle.sh --parity-scenes 200 # any further `nanovla export` option
# The export fails, and leaves the old bundle in place, if int8 drops more than 2 points of exact
# match (or 3 of caption F1) below fp32 on the parity scenes.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MODEL=nanovla/assets/default_model
# Reproducible: with the weights as committed, the export time recorded in bundle.json and the graphs'
# metadata is the weights' commit time, so re-running on the same commit writes the same files.
if [ -z "${SOURCE_DATE_EPOCH:-}" ] && git diff --quiet HEAD -- "$MODEL" 2>/dev/null; then
  SOURCE_DATE_EPOCH="$(git log -1 --format=%ct -- "$MODEL/model.safetensors")"
  [ -n "$SOURCE_DATE_EPOCH" ] && export SOURCE_DATE_EPOCH || unset SOURCE_DATE_EPOCH
fi
# one onnxruntime thread while measuring parity: the same scenes give the same figures on any machine
exec python -m nanovla.cli export "$MODEL" --to onnx-int8 --out nanovla/assets/default_bundle \
  --parity-scenes 50 --parity-seed 0 --parity-questions 4 --calibration-count 64 --threads 1 "$@"
