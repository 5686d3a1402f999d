"""CUDA probes shared by the TensorRT backend and the TensorRT engine builder (cuda-python only;
nothing is probed at import)."""

from __future__ import annotations


def cudart():
    """cuda-python's runtime module (new `cuda.bindings` layout first), or None."""
    try:
        from cuda.bindings import runtime
        return runtime
    except ImportError:
        pass
    try:
        from cuda import cudart as runtime
        return runtime
    except ImportError:
        return None


def gpu_name() -> str | None:
    """The first CUDA GPU as "NAME (sm_XY)" (an engine runs only on the GPU model it was built for), or None."""
    rt = cudart()
    if rt is None:
        return None
    err, count = rt.cudaGetDeviceCount()
    if int(err) != 0 or count == 0:
        return None
    err, props = rt.cudaGetDeviceProperties(0)
    name = props.name
    name = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
    return f"{name.strip(chr(0))} (sm_{props.major}{props.minor})"
