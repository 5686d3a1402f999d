"""The one table of export formats, the export options and the export's error. The table and the
options drive argument validation and `nanovla export --help`; nothing else lists formats or options."""

from __future__ import annotations

from dataclasses import dataclass

class ExportError(ValueError):
    """An export that cannot be done, or whose parity is outside tolerance; one line."""


# options every format accepts
COMMON_OPTIONS = ("parity_scenes", "parity_seed", "parity_questions", "allow_drift", "threads")


@dataclass(frozen=True)
class ExportFormat:
    name: str  # the --to value
    suffix: str  # file suffix of the graphs it writes
    device: str  # where it is built: cpu | gpu
    precision: str  # fp32 | int8 | fp16 | tensorrt (engine precision is an option)
    options: tuple[str, ...]  # ExportOptions fields accepted beyond COMMON_OPTIONS
    summary: str  # one line for --help


FORMATS: dict[str, ExportFormat] = {f.name: f for f in (
    ExportFormat("onnx", ".onnx", "cpu", "fp32", (), "fp32 ONNX graphs (vision, prefill, decode)"),
    ExportFormat("onnx-int8", ".onnx", "cpu", "int8", ("calibration_count", "calibration_method"),
                 "int8: prefill by dynamic quantization, decode by weight-only int8 MatMulNBits, "
                 "vision by static QDQ calibrated on generated scenes"),
    ExportFormat("onnx-fp16", ".onnx", "cpu", "fp16", (),
                 "fp16 graphs (pixels in and logits out stay fp32; KV cache fp16); for GPU providers"),
    ExportFormat("tensorrt", ".plan", "gpu", "tensorrt",
                 ("trt_precision", "calibration_count", "calibration_method", "workspace_gb", "max_batch",
                  "timing_cache"),
                 "TensorRT engines built from the fp32 graphs (fp16 or calibrated int8); needs a GPU"),
)}

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
TRT_PRECISIONS = ("fp16", "int8")


@dataclass
class ExportOptions:
    parity_scenes: int = 50  # eval scenes for greedy-token agreement / exact match at export time
    parity_seed: int = 0  # seed of the eval scenes
    parity_questions: int = 4  # questions per scene for exact match (quantized formats)
    allow_drift: bool = False  # write the bundle even when parity is outside tolerance (recorded as failed)
    threads: int = 0  # onnxruntime threads while measuring parity (0 = default)
    calibration_count: int = 64  # generated scenes used to calibrate int8 (static QDQ / TensorRT)
    calibration_method: str = "minmax"  # minmax | entropy | percentile (onnxruntime static quantization)
    trt_precision: str = "fp16"  # TensorRT engine precision: fp16 | int8
    workspace_gb: float = 2.0  # TensorRT builder workspace limit
    max_batch: int = 1  # TensorRT optimization profile: largest batch
    timing_cache: str = ""  # TensorRT timing cache file to reuse and update ("" = inside the bundle)

    def validate(self, fmt: ExportFormat, given: set[str] | None = None) -> None:
        """given: the option names the user set explicitly (each must apply to the format)."""
        accepted = set(COMMON_OPTIONS) | set(fmt.options)
        for name in sorted(given or ()):
            if name not in accepted:
                flags = ", ".join("--" + o.replace("_", "-") for o in sorted(accepted))
                raise ValueError(f"--{name.replace('_', '-')} does not apply to --to {fmt.name} (it accepts {flags})")
        if self.parity_scenes < 1:
            raise ValueError(f"--parity-scenes must be >= 1, got {self.parity_scenes}")
        if self.parity_questions < 0:
            raise ValueError(f"--parity-questions must be >= 0, got {self.parity_questions}")
        if self.calibration_count < 1:
            raise ValueError(f"--calibration-count must be >= 1, got {self.calibration_count}")
        if self.calibration_method not in CALIBRATION_METHODS:
            raise ValueError(f"--calibration-method must be one of {', '.join(CALIBRATION_METHODS)}, "
                             f"got {self.calibration_method!r}")
        if self.trt_precision not in TRT_PRECISIONS:
            raise ValueError(f"--trt-precision must be one of {', '.join(TRT_PRECISIONS)}, got {self.trt_precision!r}")
        if self.max_batch < 1 or self.workspace_gb <= 0:
            raise ValueError("--max-batch must be >= 1 and --workspace-gb > 0")


def option_help() -> dict[str, str]:
    """Each ExportOptions field's comment (the comment is the one description of the option)."""
    import inspect
    import re

    source = inspect.getsource(ExportOptions)
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^    (\w+): [^#\n]+#(.*)$", source, re.M)}


def formats_help() -> str:
    width = max(len(n) for n in FORMATS)
    lines = []
    for f in FORMATS.values():
        extra = (" [" + ", ".join("--" + o.replace("_", "-") for o in f.options) + "]") if f.options else ""
        lines.append(f"  {f.name:<{width}}  ({f.device}) {f.summary}{extra}")
    return "formats:\n" + "\n".join(lines)
