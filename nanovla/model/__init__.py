"""The model layer: the configs, the PyTorch modules (decoder, projector, vision encoders, the
VLM), checkpoints, the tokenizer and where shipped assets live. It imports nothing else of nanovla.

Nothing is imported here, on purpose: tokenizer, checkpoint_files, config and paths need no
PyTorch and must stay importable on a bundle-only install."""
