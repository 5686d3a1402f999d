"""Several cameras: one describer per camera, each in its own namespace.

  ros2 launch nanovla_ros multi_camera.launch.py cameras:=front,rear
  ros2 launch nanovla_ros multi_camera.launch.py cameras:=front,rear simulate:=false

Each namespace <cam> gets <cam>/image (and <cam>/image/compressed) in, <cam>/description,
<cam>/description/text, <cam>/ask and <cam>/ask_stream out; all describers report on /diagnostics.
With simulate:=true (the default) a camera_sim publishes in each namespace; with simulate:=false
remap your drivers' topics to <cam>/image or set image_topic per namespace in a params file.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, GroupAction, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node, PushRosNamespace


def _cameras(context):
    params = LaunchConfiguration("params_file").perform(context)
    autostart = LaunchConfiguration("autostart").perform(context).lower() in ("1", "true", "yes")
    groups = []
    for seed, camera in enumerate(c.strip() for c in LaunchConfiguration("cameras").perform(context).split(",")):
        if not camera:
            continue
        groups.append(GroupAction([
            PushRosNamespace(camera),
            Node(package="nanovla_ros", executable="camera_sim", name="camera_sim", output="screen",
                 parameters=[params, {"frame_id": f"{camera}_camera", "seed": seed}],
                 condition=IfCondition(LaunchConfiguration("simulate"))),
            # namespace="" keeps the pushed namespace (LifecycleNode requires the argument)
            LifecycleNode(package="nanovla_ros", executable="describer", name="describer", namespace="",
                          output="screen", parameters=[params, {"autostart": autostart}]),
        ]))
    return groups


def generate_launch_description():
    share = get_package_share_directory("nanovla_ros")
    return LaunchDescription([
        DeclareLaunchArgument("cameras", default_value="front,rear", description="comma-separated namespaces"),
        DeclareLaunchArgument("simulate", default_value="true", description="start a camera_sim per camera"),
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "params.yaml")),
        DeclareLaunchArgument("autostart", default_value="true"),
        OpaqueFunction(function=_cameras),
    ])
