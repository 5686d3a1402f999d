"""Fixtures of the ROS 2 tests; the harness lives in ros_harness.py (a unique module name, so the
tests can import its helpers without clashing with tests/conftest.py)."""

from ros_harness import client, long_answer_checkpoint, ros_env, start_node  # noqa: F401
