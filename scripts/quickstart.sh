#!/usr/bin/env bash
# The Quick start's first command: set up, describe the shipped sample images with the shipped
# default model, then run the ROS 2 demo (camera_sim -> describer -> printer over DDS) for a few
# seconds.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
# shellcheck disable=SC1091
source .venv/bin/activate
echo "== nanovla describe (shipped default model, shipped sample images)"
nanovla describe nanovla/assets/samples/*.jpg
if [ -z "${NANOVLA_SKIP_ROS:-}" ]; then
  echo "== ROS 2 demo"
  bash scripts/ros_demo.sh
fi
