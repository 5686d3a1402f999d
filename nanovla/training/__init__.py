"""The training layer: `nanovla train` (train.py: the entry point and the text/align/sft loop), its
config (config.py, no PyTorch: the CLI builds `train` flags from it), the shared loop parts
(common.py), the vision, linearize and rl stages, rewards, scaling, recipes and the feature cache.

May import every layer below it (model, runtime, data, evaluation); nothing but the CLI imports it.
Nothing is imported here, so `nanovla.training.config` loads without PyTorch."""
