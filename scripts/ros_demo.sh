#!/usr/bin/env bash
# The ROS 2 pipeline for a few seconds, over DDS on this machine:
#   camera_sim (generated tabletop scenes) -> describer (lifecycle, autostart) -> printer
# prints stamped descriptions, then stops every node with Ctrl-C (SIGINT) and exits 0.
#
#   source .venv/bin/activate && scripts/ros_demo.sh
#   NANOVLA_MODEL=runs/default/sft DEMO_DESCRIPTIONS=10 scripts/ros_demo.sh
#
# Needs the workspace built (scripts/ros_setup.sh; run here if missing). No ROS 2 install needed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WS="$ROOT/ros2_ws"
DESCRIPTIONS="${DEMO_DESCRIPTIONS:-6}"   # the printer exits after this many descriptions
TIMEOUT_S="${DEMO_TIMEOUT_S:-120}"        # model loading included
RATE_HZ="${DEMO_RATE_HZ:-10.0}"          # camera frames per second
MODEL="${NANOVLA_MODEL:-}"               # empty = the shipped default model
PYTHON="${PYTHON:-$(command -v python || command -v python3 || echo python3)}"

if [ -z "$MODEL" ]; then
  default_model="$("$PYTHON" -c 'from nanovla.model.paths import default_model_dir; print(default_model_dir())')"
  if [ ! -f "$default_model/config.json" ] && [ ! -f "$default_model/bundle.json" ]; then
    echo "ros_demo: no shipped model at $default_model; set NANOVLA_MODEL to a checkpoint or bundle directory" >&2
    exit 1
  fi
fi
[ -d "$WS/install/nanovla_ros" ] || "$ROOT/scripts/ros_setup.sh"

# keep DDS on this machine, in a domain of its own, with logs in a temporary folder
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-$((20 + $$ % 80))}"
TMP="$(mktemp -d -t nanovla_ros_demo.XXXXXX)"
export ROS_LOG_DIR="$TMP/log"
export RCUTILS_COLORIZED_OUTPUT=0 RCUTILS_CONSOLE_OUTPUT_FORMAT="[{name}] {message}" PYTHONUNBUFFERED=1
if [ -n "${VIRTUAL_ENV:-}" ]; then
  export AMENT_PREFIX_PATH="${AMENT_PREFIX_PATH:+$AMENT_PREFIX_PATH:}$VIRTUAL_ENV"
fi
set +u  # colcon's setup scripts read unset variables
# shellcheck disable=SC1091
source "$WS/install/setup.bash"
set -u
BIN="$WS/install/nanovla_ros/lib/nanovla_ros"
shm_before="$(ls /dev/shm 2>/dev/null | grep -E '^(sem\.)?fastdds_' || true)"

set -m  # background jobs get their own process groups and a working SIGINT
pids=()
stop_all() {
  for pid in "${pids[@]}"; do kill -INT -- "-$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  pids=()
}
cleanup() {
  stop_all
  # Fast DDS removes its shared-memory files on a clean exit; remove any a killed node left behind
  # (only files that were not there before and that no live process has mapped)
  local used
  used="$(cat /proc/[0-9]*/maps 2>/dev/null | grep -oE '/dev/shm/(sem\.)?fastdds_[^ ]*' | sort -u || true)"
  for f in $(ls /dev/shm 2>/dev/null | grep -E '^(sem\.)?fastdds_' || true); do
    grep -qx "$f" <<<"$shm_before" && continue
    grep -qx "/dev/shm/${f%_el}" <<<"$used" && continue
    rm -f "/dev/shm/$f"
  done
  rm -rf "$TMP"
}
trap cleanup EXIT

echo "ros_demo: ROS_DOMAIN_ID=$ROS_DOMAIN_ID; camera_sim -> describer -> printer (model: ${MODEL:-shipped default})"
"$BIN/describer" --ros-args -p autostart:=true -p "model:=${MODEL:-''}" -p max_rate_hz:=2.0 \
  >"$TMP/describer.log" 2>&1 &
pids+=($!)
"$BIN/camera_sim" --ros-args -p rate_hz:="$RATE_HZ" -p scene_period_s:=2.0 -p frame_id:=demo_camera 2>&1 &
pids+=($!)

status=0
timeout --foreground "$TIMEOUT_S" "$BIN/printer" --ros-args -p max_count:="$DESCRIPTIONS" || status=$?
grep -E "loaded|active:" "$TMP/describer.log" | sed 's/^/  /' || true
if [ "$status" -ne 0 ]; then
  echo "ros_demo: no $DESCRIPTIONS descriptions within ${TIMEOUT_S}s (exit $status); describer log:" >&2
  cat "$TMP/describer.log" >&2
  exit 1
fi
stop_all
if grep -q "Traceback" "$TMP/describer.log"; then
  echo "ros_demo: the describer failed while stopping:" >&2
  cat "$TMP/describer.log" >&2
  exit 1
fi
echo "ros_demo: $DESCRIPTIONS stamped descriptions received; all nodes stopped cleanly"
