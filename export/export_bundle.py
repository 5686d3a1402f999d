"""Export a checkpoint to a bundle (thin entry point; the logic is nanovla/export/).

    python export/export_bundle.py CHECKPOINT --to onnx-int8 --out bundles/default-int8
    python export/export_bundle.py --help          # formats and options

Same as `nanovla export ...`.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nanovla.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
