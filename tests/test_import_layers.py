"""Imports run one way, through layers (README "Layout"):

    model < runtime < data < evaluation < training < export < cli / serve

a module imports only from its own layer or the ones MAY_IMPORT lists for it (export never imports
training; runtime never imports data, evaluation, training or export; model imports no other layer),
function-local imports included. No import cycles between modules or between packages; few
function-local imports (MAX_FUNCTION_LOCAL: only those guarding an optional dependency: rclpy,
tensorrt, ...); the ROS 2 nodes use only the runtime (and the scene renderer for the simulated
camera); and nothing a bundle-only robot runs imports PyTorch at module level (only the torch
backend and its engine do, and they are loaded by name)."""

from __future__ import annotations

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "nanovla")
ROS_NODES = os.path.join(REPO, "ros2_ws", "src", "nanovla_ros", "nanovla_ros")
TORCH = ("torch", "torchvision", "ultralytics", "safetensors.torch")
# modules a bundle-only install runs (describe / ask / eval / info / data generate / serve / the ROS describer)
TORCH_FREE = ["model/__init__.py", "model/checkpoint_files.py", "model/config.py", "model/paths.py", "model/tokenizer.py",
              "runtime", "data", "evaluation/__init__.py", "evaluation/scenes.py", "evaluation/formats.py",
              "training/__init__.py", "training/config.py",
              "cli/__init__.py", "cli/__main__.py", "cli/main.py", "cli/common.py", "cli/inference.py", "cli/data.py",
              "cli/serve.py", "serve"]
TORCH_ALLOWED = {"runtime/torch_backend.py", "runtime/engine.py"}
# modules that import torch, which a torch-free module must not import at module level
TORCH_MODULES = ("nanovla.model.checkpoint", "nanovla.model.vlm", "nanovla.runtime.engine",
                 "nanovla.runtime.torch_backend", "nanovla.training.train", "nanovla.cli.training", "nanovla.cli.hub",
                 "nanovla.cli.export")

# package -> the packages its modules may import besides their own. The order is
# model < runtime < data < evaluation < training < export < cli/serve, except that export does not
# import training (a bundle is made from a checkpoint; the exporter needs no trainer)
MAY_IMPORT = {
    "model": set(),
    "runtime": {"model"},
    "data": {"model", "runtime"},
    "evaluation": {"model", "runtime", "data"},
    "training": {"model", "runtime", "data", "evaluation"},
    "export": {"model", "runtime", "data", "evaluation"},
    "serve": {"model", "runtime", "data", "evaluation", "training", "export"},
    "cli": {"model", "runtime", "data", "evaluation", "training", "export", "serve"},
}
MAX_FUNCTION_LOCAL = 15
# what the ROS 2 nodes may import of nanovla: the runtime (not its torch parts), the torch-free model
# modules, and (the simulated camera only) the scene renderer
ROS_ALLOWED = ("nanovla.runtime", "nanovla.model.tokenizer", "nanovla.model.paths", "nanovla.model.config",
               "nanovla.model.checkpoint_files")
ROS_FORBIDDEN = ("nanovla.runtime.engine", "nanovla.runtime.torch_backend")
ROS_CAMERA_ONLY = {"camera_sim.py": ("nanovla.data.scenes",)}


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


def package_of(module: str) -> str:
    """nanovla.runtime.base -> runtime (a module's layer is its sub-package)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The module graph collapsed to sub-packages (model, runtime, ...); imports within one dropped."""
    packages: dict[str, set[str]] = {}
    for module, deps in graph.items():
        packages.setdefault(package_of(module), set()).update(
            package_of(d) for d in deps if package_of(d) != package_of(module))
    return packages


def test_no_import_cycles_between_nanovla_packages():
    packages = package_graph(module_graph())
    assert "model" in packages["runtime"] and "runtime" in packages["export"]  # the collapse sees the imports
    assert cycles(packages) == []
    assert cycles(package_graph({"nanovla.data.a": {"nanovla.runtime.b"}, "nanovla.runtime.b": {"nanovla.data.c"},
                                 "nanovla.data.c": set()})) == [["data", "runtime"]]


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """`module -> imported` for each import that MAY_IMPORT does not allow (unknown packages too)."""
    bad = []
    for module, deps in sorted(graph.items()):
        package = package_of(module)
        for dep in sorted(deps):
            if package_of(dep) != package and package_of(dep) not in MAY_IMPORT.get(package, ()):
                bad.append(f"{module} -> {dep}")
    return bad


def test_the_layer_check_finds_planted_violations():
    planted = {"nanovla.model.vlm": {"nanovla.model.config", "nanovla.runtime.engine"},
               "nanovla.runtime.base": {"nanovla.data.scenes", "nanovla.model.paths"},
               "nanovla.export.parity": {"nanovla.training.common", "nanovla.evaluation.scenes"},
               "nanovla.cli.main": {"nanovla.export.formats", "nanovla.training.config"}}
    assert layer_violations(planted) == ["nanovla.export.parity -> nanovla.training.common",
                                         "nanovla.model.vlm -> nanovla.runtime.engine",
                                         "nanovla.runtime.base -> nanovla.data.scenes"]


def test_every_module_lives_in_a_layer():
    """No module beside the layers (a new flat nanovla/x.py would be in no layer)."""
    stray = [m for m in module_graph() if m != "nanovla" and package_of(m) not in MAY_IMPORT]
    assert not stray, f"modules outside the layer packages {sorted(MAY_IMPORT)}: {stray}"


def test_imports_follow_the_layers():
    """Every import, function-local ones too: model < runtime < data < evaluation < training <
    export < cli/serve, and export never imports training."""
    bad = layer_violations(module_graph())
    assert not bad, "imports against the layers (see MAY_IMPORT):\n" + "\n".join(bad)


def function_local_imports(source: str, name: str) -> list[str]:
    """`name:line module` of each import of nanovla (relative, or `nanovla.`) that is not at the
    module's top level (a top-level `if TYPE_CHECKING:` block counts as top level)."""
    tree = ast.parse(source, name)
    top = set()
    for node in tree.body:
        top.add(node)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            top.update(node.body)
    found = []
    for node in ast.walk(tree):
        if node in top:
            continue
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] == "nanovla"):
            found.append(f"{name}:{node.lineno} {'.' * node.level}{node.module or ''}")
        elif isinstance(node, ast.Import):
            found += [f"{name}:{node.lineno} {a.name}" for a in node.names if a.name.split(".")[0] == "nanovla"]
    return found


def test_the_function_local_count_sees_nested_imports():
    source = ("from typing import TYPE_CHECKING\nfrom .a import b\nif TYPE_CHECKING:\n    from .c import d\n"
              "def f():\n    from ..e import g\n    import nanovla.h\n    import json\n")
    assert function_local_imports(source, "x.py") == ["x.py:6 ..e", "x.py:7 nanovla.h"]


def test_few_function_local_imports():
    """Imports live at the top of a module, where a reader looks; a function-local one is for an
    optional dependency's import chain only (rclpy, tensorrt, ...), at most MAX_FUNCTION_LOCAL."""
    found = []
    for relpath in modules("."):
        with open(os.path.join(PACKAGE, relpath)) as f:
            found += function_local_imports(f.read(), os.path.join("nanovla", relpath))
    assert any("serve/app.py" in line and "ros_camera" in line for line in found)  # rclpy: stays local
    assert len(found) <= MAX_FUNCTION_LOCAL, (f"{len(found)} function-local imports of nanovla (at most "
                                              f"{MAX_FUNCTION_LOCAL}):\n" + "\n".join(found))


def ros_node_imports() -> list[tuple[str, int, str]]:
    """(file, line, module) of each absolute import of nanovla in the ROS 2 nodes (function-local too)."""
    found = []
    for name in sorted(os.listdir(ROS_NODES)):
        if not name.endswith(".py"):
            continue
        with open(os.path.join(ROS_NODES, name)) as f:
            tree = ast.parse(f.read(), name)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and not node.level and node.module:
                modules_ = [node.module]
            elif isinstance(node, ast.Import):
                modules_ = [a.name for a in node.names]
            else:
                continue
            found += [(name, node.lineno, m) for m in modules_ if m == "nanovla" or m.startswith("nanovla.")]
    return found


def test_ros_nodes_use_only_the_runtime():
    """The nodes run on a robot from a bundle: nanovla.runtime (not its torch backend), the torch-free
    model modules, and for the simulated camera only, the scene renderer (nanovla.data.scenes)."""
    found = ros_node_imports()
    assert any(m.startswith("nanovla.runtime") for _, _, m in found)  # the walk sees the nodes' imports

    def allowed(name: str, module: str) -> bool:
        within = lambda prefixes: any(module == p or module.startswith(p + ".") for p in prefixes)  # noqa: E731
        return (within(ROS_ALLOWED) or within(ROS_CAMERA_ONLY.get(name, ()))) and not within(ROS_FORBIDDEN)

    bad = [f"{name}:{line} {module}" for name, line, module in found if not allowed(name, module)]
    assert not bad, f"ROS 2 nodes import more of nanovla than the runtime: {bad}"
    assert not allowed("describer.py", "nanovla.data.scenes") and not allowed("x.py", "nanovla.runtime.engine")


def test_every_subcommand_has_a_command_module():
    """cli/main.py's COMMANDS names, for each subcommand, the module whose cmd_* function runs it."""
    import argparse
    import importlib

    main = importlib.import_module("nanovla.cli.main")

    def handlers(parser: argparse.ArgumentParser, path: tuple[str, ...]):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from handlers(sub, path + (name,))
                return
        yield path, parser.get_default("handler")

    found = list(handlers(main.build_parser(), ()))
    assert len(found) >= 15 and {p[0] for p, _ in found} == set(main.COMMANDS)
    for path, handler in found:
        module = importlib.import_module(f"nanovla.cli.{main.COMMANDS[path[0]]}")
        assert callable(getattr(module, handler or "", None)), f"nanovla {' '.join(path)}: no {handler} in {module}"
