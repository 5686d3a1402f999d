"""The prompts every part of nanovla sends the model: the training data's questions, the
runtime's `describe`, the exporter's parity check, the evaluators, the server and the ROS node all
import them from here. (The chat template itself — the control tokens and how a turn is laid out —
lives with the tokenizer: nanovla.model.tokenizer.render / image_prefix / question_suffix.)"""

from __future__ import annotations

DESCRIBE_PROMPT = "describe the scene."  # the instruction a caption answers
