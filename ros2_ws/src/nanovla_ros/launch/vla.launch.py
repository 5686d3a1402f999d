"""The describer alone, on a robot's own camera.

  ros2 launch nanovla_ros vla.launch.py image:=/camera/color/image_raw
  ros2 launch nanovla_ros vla.launch.py namespace:=front image:=/front/image_raw params_file:=/path/params.yaml
  ros2 launch nanovla_ros vla.launch.py autostart:=false   # leave configure/activate to a lifecycle manager
  ros2 launch nanovla_ros vla.launch.py image_topics:=/front/image_raw,/rear/image_raw/compressed

image_topics (comma-separated; empty = the one camera of `image` / `compressed_image`): several
cameras described by ONE describer in one batched pass per tick; every description goes to
`description` with its frame's header, so frame_id tells the cameras apart. Topics ending in
/compressed are sensor_msgs/CompressedImage.

Topics are relative to the namespace: description, description/text, ask, ask_stream; /diagnostics.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode


def _describer(context):
    overrides = {"autostart": LaunchConfiguration("autostart").perform(context).lower() in ("true", "1", "yes")}
    model = LaunchConfiguration("model").perform(context)
    if model:  # only when given: an empty override would hide the params file's model
        overrides["model"] = model
    topics = [t.strip() for t in LaunchConfiguration("image_topics").perform(context).split(",") if t.strip()]
    if topics:  # only when given, like model
        overrides["image_topics"] = topics
    return [LifecycleNode(
        package="nanovla_ros",
        executable="describer",
        name="describer",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        emulate_tty=True,
        parameters=[LaunchConfiguration("params_file"), overrides],
        # remapping, not a parameter, so ros2 topic info shows the real camera topic
        remappings=[("image", LaunchConfiguration("image")),
                    ("image/compressed", LaunchConfiguration("compressed_image"))],
    )]


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory("nanovla_ros"), "config", "params.yaml")
    return LaunchDescription([
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the describer's topics"),
        DeclareLaunchArgument("image", default_value="image", description="sensor_msgs/Image topic of the camera"),
        DeclareLaunchArgument("compressed_image", default_value="image/compressed",
                              description="sensor_msgs/CompressedImage topic of the camera"),
        DeclareLaunchArgument("image_topics", default_value="",
                              description="several cameras in one pass: comma-separated Image topics (names ending "
                                          "in /compressed: CompressedImage); empty = the one camera of image / "
                                          "compressed_image"),
        DeclareLaunchArgument("params_file", default_value=default_params, description="describer parameters"),
        DeclareLaunchArgument("model", default_value="",
                              description="checkpoint or bundle directory; empty = params_file's value"),
        DeclareLaunchArgument("autostart", default_value="true",
                              description="configure and activate the describer at startup"),
        OpaqueFunction(function=_describer),
    ])
