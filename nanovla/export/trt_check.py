"""What can be checked about TensorRT without TensorRT: every op of an exported graph is in the
TensorRT ONNX parser's supported-operator list for the targeted version (the checked-in
`tensorrt_supported_ops.txt`, its source named in its header), the dynamic dimensions are
declared, and no int64 tensor sits on the data path (where TensorRT would insert casts).

    python -m nanovla.export.trt_check BUNDLE_OR_ONNX...
"""

from __future__ import annotations

import os
import sys

from ..runtime.bundle import GRAPHS, read_bundle

OPS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tensorrt_supported_ops.txt")
# ops that only compute shapes; their int64 outputs are shape tensors, which TensorRT handles
SHAPE_SOURCES = ("Shape", "Size", "Constant", "ConstantOfShape")


def supported_ops(path: str = OPS_FILE) -> tuple[str, dict[str, dict]]:
    """(TensorRT version, {op: {supported, types, restrictions}}) from the checked-in list."""
    version, table = "", {}
    with open(path) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            cells = line.rstrip("\n").split("\t")
            if cells[0] == "tensorrt_version":
                version = cells[1]
                continue
            table[cells[0]] = {"supported": cells[1] == "Y", "types": cells[2].split(",") if cells[2] else [],
                               "restrictions": cells[3] if len(cells) > 3 else ""}
    return version, table


def check_onnx_for_tensorrt(path: str, dynamic_inputs: dict[str, tuple[str, ...]] | None = None) -> dict:
    """A report {ops, problems, notes, version}; problems is empty when TensorRT should parse it.

    dynamic_inputs: input name -> symbolic dims it must declare (e.g. {"input_ids": ("batch", "sequence")})."""
    import onnx

    version, table = supported_ops()
    model = onnx.load(path)
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    problems, notes = [], []
    ops = sorted({n.op_type for n in graph.node})
    for node in graph.node:
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{node.op_type} ({node.domain}) is a custom-domain op TensorRT's parser does not know")
    for op in ops:
        entry = table.get(op)
        if entry is None or not entry["supported"]:
            problems.append(f"{op} is not supported by the TensorRT {version} ONNX parser")
        elif entry["restrictions"]:
            notes.append(f"{op}: {entry['restrictions']}")
    # restrictions that bite our graphs: CumSum's axis must be an initializer/constant
    constants = {t.name for t in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    for node in graph.node:
        if node.op_type == "CumSum" and node.input[1] not in constants:
            problems.append(f"CumSum {node.name}: axis is not a constant")
    # dynamic dims
    for value in graph.input:
        dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        for want in (dynamic_inputs or {}).get(value.name, ()):
            if want not in dims:
                problems.append(f"input {value.name} {dims} does not declare the dynamic dim {want!r}")
    # int64 on the data path: graph I/O, and int64 tensors not derived from shapes/constants only
    int64 = onnx.TensorProto.INT64
    values = list(graph.value_info) + list(graph.input) + list(graph.output)
    types = {v.name: v.type.tensor_type.elem_type for v in values}
    for value in list(graph.input) + list(graph.output):
        if value.type.tensor_type.elem_type == int64:
            problems.append(f"graph I/O {value.name} is int64 (TensorRT would cast it; use int32)")
    shape_derived = set(constants)
    data_int64 = []
    for node in graph.node:  # nodes are topologically sorted in a valid ONNX graph
        inputs = [i for i in node.input if i]
        if node.op_type in SHAPE_SOURCES or all(i in shape_derived for i in inputs):
            shape_derived.update(node.output)
            continue
        for out in node.output:
            if types.get(out) == int64:
                data_int64.append(f"{node.op_type}:{out}")
    if data_int64:
        problems.append(f"{len(data_int64)} int64 tensors on the data path, e.g. {', '.join(data_int64[:3])}")
    return {"file": path, "tensorrt_version": version, "ops": ops, "problems": problems,
            "notes": sorted(set(notes))}


def check_bundle_for_tensorrt(bundle_dir: str) -> dict[str, dict]:
    data = read_bundle(bundle_dir, check_digests=False)
    reports = {}
    for graph in GRAPHS:
        spec = data["graphs"][graph]
        dynamic = {t["name"]: tuple(d for d in t["shape"] if isinstance(d, str)) for t in spec["inputs"]}
        reports[graph] = check_onnx_for_tensorrt(os.path.join(bundle_dir, spec["file"]), dynamic)
    return reports


def main(argv: list[str] | None = None) -> int:
    paths = argv if argv is not None else sys.argv[1:]
    if not paths:
        print("usage: python -m nanovla.export.trt_check BUNDLE_OR_ONNX...", file=sys.stderr)
        return 2
    bad = 0
    for path in paths:
        reports = check_bundle_for_tensorrt(path) if os.path.isdir(path) else {path: check_onnx_for_tensorrt(path)}
        for name, r in reports.items():
            status = "ok" if not r["problems"] else "PROBLEMS"
            print(f"{path} {name}: {status} ({len(r['ops'])} op types, TensorRT {r['tensorrt_version']} list)")
            for p in r["problems"]:
                print(f"  - {p}")
            bad += bool(r["problems"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
