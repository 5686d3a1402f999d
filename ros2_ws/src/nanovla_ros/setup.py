from glob import glob

from setuptools import find_packages, setup

package_name = "nanovla_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        ("share/" + package_name + "/config", glob("config/*.yaml") + glob("config/*.xml")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="nanovla maintainers",
    maintainer_email="nanovla@example.com",
    description="nanovla ROS 2 nodes: describer (lifecycle), camera_sim, printer",
    license="MIT",
    entry_points={
        "console_scripts": [
            "describer = nanovla_ros.describer:main",
            "camera_sim = nanovla_ros.camera_sim:main",
            "printer = nanovla_ros.printer:main",
        ],
    },
)
