"""Check bundles / ONNX graphs against TensorRT's supported-operator list, declared dynamic dims
and int64 use, without TensorRT (thin entry point; the logic is nanovla/export/trt_check.py).

    python export/check_tensorrt.py bundles/default-onnx
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nanovla.export.trt_check import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
