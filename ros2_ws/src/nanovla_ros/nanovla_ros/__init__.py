"""ROS 2 nodes for nanovla: the describer (scene descriptions and Q&A on a camera topic), a camera
simulator and a console printer."""
