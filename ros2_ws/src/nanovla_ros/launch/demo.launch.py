"""The whole pipeline anywhere: camera_sim -> describer -> printer.

  ros2 launch nanovla_ros demo.launch.py
  ros2 launch nanovla_ros demo.launch.py rate_hz:=30.0 transport:=compressed
  ros2 launch nanovla_ros demo.launch.py source:=/path/to/video.mp4
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node
from launch_ros.parameter_descriptions import ParameterValue


def _describer(context):
    overrides = {"autostart": LaunchConfiguration("autostart").perform(context).lower() in ("true", "1", "yes")}
    model = LaunchConfiguration("model").perform(context)
    if model:  # only when given: an empty override would hide the params file's model
        overrides["model"] = model
    return [LifecycleNode(
        package="nanovla_ros",
        executable="describer",
        name="describer",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        emulate_tty=True,
        parameters=[LaunchConfiguration("params_file"), overrides],
    )]


def generate_launch_description():
    share = get_package_share_directory("nanovla_ros")
    params = LaunchConfiguration("params_file")
    return LaunchDescription([
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the three nodes"),
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "params.yaml")),
        DeclareLaunchArgument("source", default_value="scenes",
                              description="scenes, a video file, an image folder, camera:N or /dev/videoN"),
        DeclareLaunchArgument("rate_hz", default_value="10.0", description="camera frames per second"),
        DeclareLaunchArgument("transport", default_value="raw", description="raw, compressed or both"),
        DeclareLaunchArgument("autostart", default_value="true",
                              description="configure and activate the describer at startup"),
        DeclareLaunchArgument("model", default_value="",
                              description="checkpoint or bundle directory; empty = params_file's value"),
        Node(
            package="nanovla_ros",
            executable="camera_sim",
            name="camera_sim",
            namespace=LaunchConfiguration("namespace"),
            output="screen",
            parameters=[params, {
                "source": LaunchConfiguration("source"),
                "rate_hz": ParameterValue(LaunchConfiguration("rate_hz"), value_type=float),
                "transport": LaunchConfiguration("transport"),
            }],
        ),
        OpaqueFunction(function=_describer),
        Node(
            package="nanovla_ros",
            executable="printer",
            name="printer",
            namespace=LaunchConfiguration("namespace"),
            output="screen",
            emulate_tty=True,
        ),
    ])
