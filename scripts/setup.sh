#!/usr/bin/env bash
# Set up nanovla on a fresh machine: a virtual environment in .venv with the pinned PyTorch,
# the package with its extras, Chromium for the page's browser test (as root, unless
# NANOVLA_SKIP_BROWSER=1), and (unless NANOVLA_SKIP_ROS=1) ROS 2 from pip wheels plus the
# colcon-built ROS 2 workspace. Idempotent: a second run is quick.
#
#   bash scripts/setup.sh && source .venv/bin/activate
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
# shellcheck disable=SC1091
source .venv/bin/activate
if ! python -c "import torch, torchvision; assert torch.__version__.startswith('2.14.1')" >/dev/null 2>&1; then
  echo "setup: installing torch==2.14.1 torchvision==0.29.1"
  # pinned on purpose: an unpinned torch resolves to the newest CUDA build (several GB)
  python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
fi
if ! python -c "import nanovla, ultralytics, onnxruntime, transformers, rosbags, pytest, fastapi, uvicorn, openai, selenium" \
    >/dev/null 2>&1 \
    || [ pyproject.toml -nt .venv/.nanovla-installed ]; then
  echo "setup: installing nanovla and its extras"
  python -m pip install --quiet -e ".[all]"
  touch .venv/.nanovla-installed
fi
# the page's browser test (tests/test_serve_browser.py) drives the system Chromium with Selenium;
# installed with apt where we are root and it is missing (elsewhere that test skips, saying why)
if [ -z "${NANOVLA_SKIP_BROWSER:-}" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
    && { ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; }; then
  echo "setup: installing chromium and chromium-driver (apt) for the browser test"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null \
    || echo "setup: warning: apt-get could not install chromium; the browser test will skip (fail in CI)" >&2
fi
if [ -z "${NANOVLA_SKIP_ROS:-}" ]; then
  bash scripts/ros_setup.sh
fi
echo "setup: ready (source .venv/bin/activate)"
