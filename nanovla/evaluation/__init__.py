"""The evaluation layer: scoring a runtime on nanovla scenes (scenes.py), on LLaVA/COCO/VQA/GQA/HF
data sets (formats.py), and linear probes of a checkpoint's image tokens (probe.py, PyTorch).

May import nanovla.model, nanovla.runtime and nanovla.data. Nothing is imported here: scenes.py
and formats.py need no PyTorch."""
