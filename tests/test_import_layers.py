"""Imports run one way: the runtime never imports the exporter (the exporter imports the runtime:
the bundle format lives in nanovla/runtime/bundle.py), and nothing a bundle-only robot runs
imports PyTorch at module level (only the torch backend does, and it is loaded by name)."""

from __future__ import annotations

import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "nanovla")
TORCH = ("torch", "torchvision", "ultralytics", "safetensors.torch")
# modules a bundle-only install runs (describe / ask / eval / data generate / the ROS describer)
TORCH_FREE = ["model/checkpoint_files.py", "cli/main.py", "cli/common.py", "cli/__init__.py", "training/config.py", "serve", "evaluation/scenes.py", "evaluation/formats.py",
              "model/config.py", "model/paths.py", "model/tokenizer.py",
              "data", "runtime"]
TORCH_ALLOWED = {"runtime/torch_backend.py", "runtime/engine.py"}


def modules(*names: str) -> list[str]:
    """Package-relative paths of the .py files named (files, or every file under a folder)."""
    found = []
    for name in names:
        path = os.path.join(PACKAGE, name)
        if os.path.isfile(path):
            found.append(name)
            continue
        for root, _, files in os.walk(path):
            found += [os.path.relpath(os.path.join(root, f), PACKAGE) for f in files if f.endswith(".py")]
    return sorted(found)


def imports(relpath: str, top_level_only: bool) -> list[tuple[int, str]]:
    """(line, absolute module name) of each import in a package module; relative imports resolved."""
    with open(os.path.join(PACKAGE, relpath)) as f:
        tree = ast.parse(f.read(), relpath)
    package = ["nanovla"] + os.path.dirname(relpath).split(os.sep) if os.path.dirname(relpath) else ["nanovla"]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found.append((node.lineno, module))
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]  # `from . import x`
    return found


def test_the_walk_sees_relative_and_nested_imports():
    assert (19, "nanovla.runtime.bundle") in imports("export/exporter.py", top_level_only=True)
    assert any(m == "nanovla.serve.ros_camera" for _, m in imports("serve/app.py", top_level_only=False))
    assert not any(m == "nanovla.serve.ros_camera" for _, m in imports("serve/app.py", top_level_only=True))


@pytest.mark.parametrize("relpath", modules("runtime"))
def test_runtime_never_imports_the_exporter(relpath):
    bad = [(line, m) for line, m in imports(relpath, top_level_only=False)
           if m == "nanovla.export" or m.startswith("nanovla.export.")]
    assert not bad, f"nanovla/{relpath} imports the exporter ({bad}); the runtime must not (export imports runtime)"


@pytest.mark.parametrize("relpath", modules("runtime"))
def test_runtime_never_imports_the_data_package(relpath):
    bad = [(line, m) for line, m in imports(relpath, top_level_only=False)
           if m == "nanovla.data" or m.startswith("nanovla.data.")]
    assert not bad, f"nanovla/{relpath} imports nanovla.data ({bad}); data imports the runtime, not the reverse"


def test_the_describe_prompt_has_one_home():
    """Its text is written once (nanovla/runtime/prompts.py); everything else imports DESCRIBE_PROMPT."""
    from nanovla.runtime.prompts import DESCRIBE_PROMPT

    ros = os.path.join(os.path.dirname(PACKAGE), "ros2_ws", "src")
    found = []
    for top in (PACKAGE, ros):
        for root, _, files in os.walk(top):
            for name in files:
                if name.endswith(".py"):
                    with open(os.path.join(root, name)) as f:
                        if DESCRIBE_PROMPT in f.read():
                            found.append(os.path.relpath(os.path.join(root, name), os.path.dirname(PACKAGE)))
    assert found == [os.path.join("nanovla", "runtime", "prompts.py")], found


@pytest.mark.parametrize("relpath", modules(*TORCH_FREE))
def test_bundle_paths_import_no_torch_at_module_level(relpath):
    if relpath in TORCH_ALLOWED:
        pytest.skip("the torch backend itself")
    bad = [(line, m) for line, m in imports(relpath, top_level_only=True)
           if any(m == t or m.startswith(t + ".") for t in TORCH)
           or m in ("nanovla.model.checkpoint", "nanovla.runtime.engine", "nanovla.model.vlm", "nanovla.training.train")]
    assert not bad, f"nanovla/{relpath} imports PyTorch (or a torch module) at module level: {bad}"


def test_the_cli_parser_leaves_torch_unimported():
    """`nanovla describe` / `serve` with torch installed still load no torch (its `train` flags come
    from the torch-free TrainConfig): a bundle-only server stays small."""
    import subprocess
    import sys

    code = ("import sys, nanovla.cli as c; c.build_parser(); "
            "print(sorted(m for m in ('torch', 'ultralytics', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out



def module_graph() -> dict[str, set[str]]:
    """nanovla module -> the nanovla modules it imports anywhere in the file (function-local too)."""
    names = {}
    for relpath in modules("."):
        name = "nanovla." + relpath[:-3].replace(os.sep, ".")
        names[name[: -len(".__init__")] if name.endswith(".__init__") else name] = relpath
    graph = {}
    for name, relpath in names.items():
        deps = set()
        for _, imported in imports(relpath, top_level_only=False):
            while imported and imported not in names:  # `from .x import f` -> nanovla.x
                imported = imported.rpartition(".")[0]
            if imported and imported not in (name, "nanovla"):
                deps.add(imported)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_planted_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_between_nanovla_modules():
    """Function-local imports count too: a cycle hidden inside a function is still a cycle."""
    graph = module_graph()
    assert "nanovla.training.common" in graph["nanovla.training.rl"]  # the walk resolves `from .x import f`
    assert cycles(graph) == []
