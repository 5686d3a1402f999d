#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite. Extra arguments go to pytest.
#   bash scripts/test.sh            # everything that can run here (slow/GPU tests skip with a reason)
#   bash scripts/test.sh -m slow    # only the slow ones
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
# shellcheck disable=SC1091
source .venv/bin/activate
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST  # DDS never leaves this machine
export AMENT_PREFIX_PATH="${AMENT_PREFIX_PATH:+$AMENT_PREFIX_PATH:}$VIRTUAL_ENV"
if [ -f ros2_ws/install/setup.bash ]; then
  set +u; source ros2_ws/install/setup.bash; set -u
fi
export YOLO_OFFLINE=1 HF_HUB_OFFLINE=1
if [ "$#" -eq 0 ]; then
  set -- -m "not slow and not gpu"
fi
python -m pytest -q --timeout=900 "$@"
