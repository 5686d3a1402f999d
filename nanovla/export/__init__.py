"""Export a checkpoint to a bundle: ONNX graphs (fp32, int8, fp16), TensorRT engines, bundle.json.

    nanovla export CHECKPOINT --to onnx-int8 --out bundles/default-int8

`formats` (the format table) and `bundle` (bundle.json) need no PyTorch; the exporter itself
(`exporter`, `graphs`, `quantize`, `parity`) needs the [export] extra. Nothing is imported here,
so importing this package has no cost and no side effects.
"""
