#!/usr/bin/env bash
# Install ROS 2 (Kilted) from pip wheels into the active Python environment and build the
# nanovla ROS 2 workspace with colcon. Idempotent: a second run installs nothing and rebuilds
# only what changed. Needs no ROS 2 install; on a machine that has one (source
# /opt/ros/<distro>/setup.bash first) it skips the wheels and just builds.
#
#   source .venv/bin/activate && scripts/ros_setup.sh     # then: scripts/ros_demo.sh
#   NANOVLA_ROS_SKIP_INSTALL=1 scripts/ros_setup.sh      # build only
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WS="$ROOT/ros2_ws"
PYTHON="${PYTHON:-$(command -v python || command -v python3 || echo python3)}"

# ROS 2 runtime (rclpy, Fast DDS, the messages the nodes use) and the interface-package build tools
WHEELS=(
  ros-kilted-rclpy ros-kilted-rmw-fastrtps-cpp ros-kilted-std-msgs ros-kilted-sensor-msgs
  ros-kilted-diagnostic-msgs ros-kilted-lifecycle-msgs ros-kilted-action-msgs ros-kilted-builtin-interfaces
  ros-kilted-rcl-interfaces ros-kilted-std-srvs
  ros-kilted-rosidl-default-generators ros-kilted-rosidl-core-generators ros-kilted-ament-cmake
  ros-kilted-ament-cmake-include-directories ros-kilted-ament-cmake-ros-core ros-kilted-ament-package
  colcon-common-extensions colcon-ros
)

if [ -n "${ROS_DISTRO:-}" ] && [ -z "${NANOVLA_ROS_FORCE_WHEELS:-}" ]; then
  echo "ros_setup: ROS 2 $ROS_DISTRO is sourced; using it (no wheels installed)"
elif [ -z "${NANOVLA_ROS_SKIP_INSTALL:-}" ]; then
  if [ -z "${VIRTUAL_ENV:-}" ]; then
    echo "ros_setup: activate the project's virtual environment first (source .venv/bin/activate)" >&2
    exit 1
  fi
  if "$PYTHON" -c "import rclpy, rclpy.lifecycle, rclpy.action, diagnostic_msgs.msg, rosidl_adapter, colcon_ros" \
      >/dev/null 2>&1 && command -v colcon >/dev/null; then
    echo "ros_setup: ROS 2 wheels already installed"
  else
    echo "ros_setup: installing ROS 2 wheels into $VIRTUAL_ENV"
    "$PYTHON" -m pip install --quiet "${WHEELS[@]}"
  fi
fi

for tool in cmake gcc; do
  command -v "$tool" >/dev/null || { echo "ros_setup: '$tool' is needed to build nanovla_msgs (apt-get install cmake g++)" >&2; exit 1; }
done

# ament finds the packages the wheels installed under the venv prefix
if [ -n "${VIRTUAL_ENV:-}" ]; then
  case ":${AMENT_PREFIX_PATH:-}:" in
    *":$VIRTUAL_ENV:"*) ;;
    *) export AMENT_PREFIX_PATH="${AMENT_PREFIX_PATH:+$AMENT_PREFIX_PATH:}$VIRTUAL_ENV" ;;
  esac
  export CMAKE_PREFIX_PATH="${CMAKE_PREFIX_PATH:+$CMAKE_PREFIX_PATH:}$VIRTUAL_ENV"
fi

echo "ros_setup: colcon build in $WS"
cd "$WS"
# colcon warns that the venv prefix has no local_setup.* files: true and harmless here
colcon --log-base "$WS/log" build \
  --cmake-args -DPython3_EXECUTABLE="$(command -v "$PYTHON" || echo "$PYTHON")" -DBUILD_TESTING=OFF \
  2> >(grep -v "doesn't contain any 'local_setup" >&2)
echo "ros_setup: done. Use it with: source $WS/install/setup.bash"
