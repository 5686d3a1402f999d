"""ROS 2 test harness (fixtures re-exported by conftest.py; helpers imported by the tests): the
workspace built with colcon, nodes started as their installed executables in separate processes,
a client node in this process, all over Fast DDS on localhost.

Skipped (with the reason) where rclpy is not installed or the workspace cannot be built.
"""

from __future__ import annotations

import ctypes
import glob
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WS = os.path.join(ROOT, "ros2_ws")
INSTALL = os.path.join(WS, "install")
PYVER = f"python{sys.version_info.major}.{sys.version_info.minor}"

try:
    import rclpy  # noqa: F401

    HAVE_RCLPY = True
except ImportError:
    HAVE_RCLPY = False

# one DDS domain per test run (parallel runs on one machine must not see each other's nodes)
DOMAIN_ID = str(10 + os.getpid() % 90)
_SHM_BEFORE = set(glob.glob("/dev/shm/fastdds_*")) | set(glob.glob("/dev/shm/sem.fastdds_*"))


def _ros_environment(log_dir: str) -> dict:
    env = dict(os.environ)
    env.update(ROS_DOMAIN_ID=DOMAIN_ID, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_LOG_DIR=log_dir,
               OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", RCUTILS_COLORIZED_OUTPUT="0",
               RCUTILS_CONSOLE_OUTPUT_FORMAT="[{severity}] [{name}]: {message}")
    venv = sys.prefix
    env["AMENT_PREFIX_PATH"] = os.pathsep.join(
        [os.path.join(INSTALL, "nanovla_ros"), os.path.join(INSTALL, "nanovla_msgs"), venv]
        + [p for p in env.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p])
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.join(INSTALL, pkg, "lib", PYVER, "site-packages") for pkg in ("nanovla_ros", "nanovla_msgs")]
        + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        [os.path.join(INSTALL, "nanovla_msgs", "lib")]
        + [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p])
    # the ros wheels' bootstrapper re-executes python once to set LD_LIBRARY_PATH; keep it doing so
    env.pop("_ROS_WHEELS_BOOTSTRAP_COMPLETE", None)
    return env


def _make_importable_here() -> None:
    """Import nanovla_msgs in this (already running) process: path + preloaded C libraries."""
    lib = os.path.join(INSTALL, "nanovla_msgs", "lib")
    os.environ["LD_LIBRARY_PATH"] = lib + os.pathsep + os.environ.get("LD_LIBRARY_PATH", "")
    for path in sorted(glob.glob(os.path.join(lib, "*.so"))):
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    site = os.path.join(INSTALL, "nanovla_msgs", "lib", PYVER, "site-packages")
    if site not in sys.path:
        sys.path.insert(0, site)
    site = os.path.join(INSTALL, "nanovla_ros", "lib", PYVER, "site-packages")
    if site not in sys.path:
        sys.path.insert(0, site)


@pytest.fixture(scope="session")
def ros_env(tmp_path_factory):
    """Build the workspace (incremental) and return the environment nodes run in."""
    if not HAVE_RCLPY:
        pytest.skip("rclpy is not installed")
    log_dir = str(tmp_path_factory.mktemp("ros_log"))
    if not os.environ.get("NANOVLA_ROS_NO_BUILD"):
        from shutil import which

        if which("colcon") is None:
            pytest.skip("colcon is not installed (scripts/ros_setup.sh installs it)")
        build = subprocess.run(["bash", os.path.join(ROOT, "scripts", "ros_setup.sh")], cwd=ROOT,
                               env={**os.environ, "NANOVLA_ROS_SKIP_INSTALL": "1"},
                               capture_output=True, text=True, timeout=600)
        if build.returncode != 0:
            pytest.fail(f"colcon build failed:\n{build.stdout[-3000:]}\n{build.stderr[-3000:]}")
    if not os.path.isdir(os.path.join(INSTALL, "nanovla_ros")):
        pytest.skip(f"{INSTALL} has no nanovla_ros: run scripts/ros_setup.sh")
    env = _ros_environment(log_dir)
    os.environ.update(ROS_DOMAIN_ID=DOMAIN_ID, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_LOG_DIR=log_dir)
    # this process publishes frames too: give it the large shared-memory segment (see the xml)
    os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = os.path.join(
        INSTALL, "nanovla_ros", "share", "nanovla_ros", "config", "fastdds_large_frames.xml")
    _make_importable_here()
    yield env
    _cleanup_shm()


def shm_in_use() -> set[str]:
    """/dev/shm files some live process has mapped (another test run's, say): never removed."""
    used = set()
    own = f"/proc/{os.getpid()}/maps"  # this process's own mappings stay valid after an unlink
    for maps in glob.glob("/proc/[0-9]*/maps"):
        if maps == own:
            continue
        try:
            with open(maps) as f:
                used.update(line.split()[-1] for line in f if "/dev/shm/" in line)
        except OSError:
            pass
    return used


def _cleanup_shm() -> None:
    """Remove the Fast DDS shared-memory files this run created and no process uses any more."""
    used = shm_in_use()
    for path in set(glob.glob("/dev/shm/fastdds_*")) | set(glob.glob("/dev/shm/sem.fastdds_*")):
        base = path[:-3] if path.endswith("_el") else path  # the lock file of a segment
        if path not in _SHM_BEFORE and path not in used and base not in used:
            try:
                os.unlink(path)
            except OSError:
                pass


def _restore_sigint():
    # a child of a non-interactive shell inherits SIGINT as ignored; nodes must see Ctrl-C
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class NodeProcess:
    """An installed node executable running in its own process group; output goes to a file."""

    def __init__(self, env: dict, executable: str, params: dict | None = None, args: list[str] | None = None,
                 log_dir: str | None = None):
        self.name = executable
        exe = os.path.join(INSTALL, "nanovla_ros", "lib", "nanovla_ros", executable)
        cmd = [exe, "--ros-args"] + list(args or [])
        for key, value in (params or {}).items():
            cmd += ["-p", f"{key}:={_param_text(value)}"]
        log_dir = log_dir or tempfile.mkdtemp(prefix="nanovla_ros_")
        self.log_path = os.path.join(log_dir, f"{executable}-{time.time_ns()}.log")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     preexec_fn=_restore_sigint, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def wait_for_log(self, pattern: str, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.log())
            if m:
                return m
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"{self.name}: {pattern!r} not in its log within {timeout} s "
                             f"(exit code {self.proc.poll()}):\n{self.log()[-3000:]}")

    def rss_mb(self) -> float:
        """Resident memory of the node's python process (the re-executed one keeps the pid)."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode


def _param_text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value else "''"
    return repr(value)


@pytest.fixture(scope="session")
def start_node(ros_env, tmp_path_factory):
    started: list[NodeProcess] = []
    log_dir = str(tmp_path_factory.mktemp("node_logs"))

    def start(executable: str, params: dict | None = None, args: list[str] | None = None) -> NodeProcess:
        node = NodeProcess(ros_env, executable, params, args, log_dir)
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()


class Client:
    """An rclpy node in this process, spun by a background executor thread."""

    def __init__(self, name: str):
        import rclpy
        from rclpy.executors import MultiThreadedExecutor

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = MultiThreadedExecutor(num_threads=2, context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self):
        try:
            self.executor.spin()
        except Exception:
            pass

    @staticmethod
    def _done_within(future, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.01)
        return future.done()

    def wait_future(self, future, timeout: float):
        assert self._done_within(future, timeout), f"no response within {timeout} s"
        return future.result()

    def call(self, client, request, timeout: float, attempts: int = 1):
        """A service call; with attempts > 1 it is re-sent when no response comes (DDS can report a
        service as available before its response writer has matched this client: that response is lost)."""
        for _ in range(attempts):
            future = client.call_async(request)
            if self._done_within(future, timeout):
                return future.result()
            client.remove_pending_request(future)
        raise AssertionError(f"no response within {timeout} s" + (f" to any of {attempts} calls" if attempts > 1 else ""))

    def close(self):
        import rclpy

        self.executor.shutdown(timeout_sec=2)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


@pytest.fixture(scope="module")
def client(ros_env, request):
    c = Client(f"nanovla_test_{request.module.__name__.split('.')[-1]}")
    yield c
    c.close()


def wait_until(predicate, timeout: float, interval: float = 0.05, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{message} not met within {timeout} s")


def build_long_answer_checkpoint(path: str) -> str:
    """A tiny random checkpoint whose greedy answers never hit a stop token, so a generation runs
    to max_new_tokens (~1 s for 900 tokens): what the cancel test needs. Built by routing the final
    hidden state through one feature that can only pick one of two ordinary tokens."""
    import torch

    import importlib.util

    spec = importlib.util.spec_from_file_location("nanovla_tests_conftest", os.path.join(ROOT, "tests", "conftest.py"))
    shared = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shared)  # tests/conftest.py: the tiny configs every test uses
    tiny_model_config, tiny_tokenizer = shared.tiny_model_config, shared.tiny_tokenizer

    from nanovla.model.checkpoint import save_checkpoint
    from nanovla.model.vlm import VisionLanguageModel

    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    cfg = tiny_model_config()
    cfg.decoder.vocab_size = tokenizer.vocab_size
    cfg.decoder.max_seq_len = 1024
    model = VisionLanguageModel(cfg, tokenizer.image_id).eval()
    special = set(tokenizer.special_ids().values())
    ordinary = [i for i in range(tokenizer.vocab_size) if i not in special][100:102]
    state = model.state_dict()
    with torch.no_grad():
        state["decoder.norm.weight"].zero_()
        state["decoder.norm.weight"][0] = 1.0  # final hidden state = (h0, 0, 0, ...)
        state["decoder.embed_tokens.weight"][:, 0] = 0.0  # tied head: logit_i = h0 * W[i, 0]
        state["decoder.embed_tokens.weight"][ordinary[0], 0] = 1.0
        state["decoder.embed_tokens.weight"][ordinary[1], 0] = -1.0
    save_checkpoint(path, model, tokenizer, {"note": "tiny random model that never stops (ROS tests)"})
    return path


@pytest.fixture(scope="session")
def long_answer_checkpoint(tmp_path_factory) -> str:
    from nanovla.runtime.base import load_runtime

    path = build_long_answer_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "long"))
    runtime = load_runtime(path)
    frame = np.zeros((64, 96, 3), np.uint8)
    answer = runtime.ask(frame, "what is here?", max_new_tokens=50)
    if len(answer.token_ids) != 50:
        pytest.skip("could not build a tiny checkpoint that never stops (model layout changed?)")
    runtime.close()
    return path
