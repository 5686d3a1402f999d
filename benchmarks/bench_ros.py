"""ROS 2 end-to-end benchmark: a 30 FPS camera into the describer, over DDS, for 60 s.

camera_sim and describer run as their installed executables (separate processes); this process
subscribes to `description` and `/diagnostics`. Reported: descriptions per second,
frame-to-description latency from the frame's stamp (p50/p95), the describer's own model time,
dropped frames (with where they went), and the describer's resident memory at start and end and
its peak (goal: <= 400 MB with the default backend, auto -> the shipped int8 bundle).
Before ROS starts, the model's own describe latency is measured in-process for comparison.

--bad-every N: the camera is this script's own (a child process, same scenes, same QoS as
camera_sim) and 1 frame in N (at seeded random places) is a bad one, cycling through wrong
encoding, data shorter than height*step, a 0x0 frame, an 8000x8000 declared size with 640x480
data and a step shorter than a row (compressed: truncated JPEG, garbage bytes, empty data, a PNG
with a cut-off body). Reported on top: bad frames published, those the describer converted and
rejected (frames_bad: the rest were replaced by a newer frame first), its "bad ... frame" log
lines, descriptions per 10 s, the longest gap between two descriptions, and whether the
describer was still alive at the end.

--launch: the describer is started by `ros2 launch nanovla_ros vla.launch.py` with the launch
file's defaults (params.yaml: max_rate_hz 2, max_new_tokens 64; --model, --backend, --threads,
--max-rate-hz and --max-new-tokens are then ignored). Needs the `ros2` command and launch_ros
(a ROS 2 install; they have no pip wheels). Peak resident memory (VmHWM) is reported for every
launched process (launch and the describer) and summed.

    source .venv/bin/activate && scripts/ros_setup.sh
    python benchmarks/bench_ros.py                      # 640x480 rgb8, 30 FPS, 60 s, shipped model
    python benchmarks/bench_ros.py --seconds 20 --width 1280 --height 720 --model runs/default/sft
    python benchmarks/bench_ros.py --bad-every 10                      # 1 frame in 10 a bad one
    python benchmarks/bench_ros.py --bad-every 10 --launch             # through `ros2 launch` (its defaults)
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import signal
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INSTALL = os.path.join(ROOT, "ros2_ws", "install")
PYVER = f"python{sys.version_info.major}.{sys.version_info.minor}"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60.0, help="how long the camera publishes")
    p.add_argument("--fps", type=float, default=30.0, help="camera frames per second")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--transport", choices=["raw", "compressed"], default="raw")
    p.add_argument("--model", default="", help="checkpoint or bundle directory (default: the shipped model)")
    p.add_argument("--backend", default="auto", help="auto (the describer's default: the shipped int8 bundle on "
                                                  "onnxruntime with no --model) | torch | onnxruntime | tensorrt")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="inference threads (0 = backend default)")
    p.add_argument("--max-rate-hz", type=float, default=1000.0, help="describer max_rate_hz (default: flat out)")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--bad-every", type=int, default=0,
                   help="1 camera frame in N (seeded random places) is a bad one (this script's own camera); "
                        "0 = camera_sim, no bad frames")
    p.add_argument("--launch", action="store_true",
                   help="start the describer with `ros2 launch nanovla_ros vla.launch.py` and its defaults")
    p.add_argument("--camera-process", action="store_true", help=argparse.SUPPRESS)  # internal: the bad-frame camera
    p.add_argument("--out", default=os.path.join(ROOT, "runs", "bench", "bench_ros.json"), help="JSON report")
    return p.parse_args(argv)


def node_environment(log_dir: str) -> dict:
    env = dict(os.environ)
    env.update(ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_LOG_DIR=log_dir, PYTHONUNBUFFERED="1")
    env.setdefault("ROS_DOMAIN_ID", str(10 + os.getpid() % 90))
    env["AMENT_PREFIX_PATH"] = os.pathsep.join(
        [os.path.join(INSTALL, "nanovla_ros"), os.path.join(INSTALL, "nanovla_msgs"), sys.prefix]
        + [p for p in env.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p])
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.join(INSTALL, pkg, "lib", PYVER, "site-packages") for pkg in ("nanovla_ros", "nanovla_msgs")]
        + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        [os.path.join(INSTALL, "nanovla_msgs", "lib")]
        + [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p])
    env.pop("_ROS_WHEELS_BOOTSTRAP_COMPLETE", None)
    return env


def ensure_ros_environment() -> None:
    """Re-execute this script once with the workspace's libraries on the loader path."""
    if os.environ.get("NANOVLA_BENCH_ROS_ENV") == "1":
        return
    if not os.path.isdir(os.path.join(INSTALL, "nanovla_ros")):
        sys.exit(f"bench_ros: {INSTALL} has no nanovla_ros; run scripts/ros_setup.sh first")
    env = node_environment(tempfile.mkdtemp(prefix="nanovla_bench_ros_log_"))
    env["NANOVLA_BENCH_ROS_ENV"] = "1"
    os.execve(sys.executable, [sys.executable] + sys.argv, env)


def model_describe_latency(args, runs: int = 24) -> dict:
    """The runtime's own describe latency (no ROS) on the scenes camera_sim will show, for comparison."""
    from nanovla.data.scenes import generate
    from nanovla.runtime.base import load_runtime

    runtime = load_runtime(args.model or None, backend=args.backend, device=args.device, threads=args.threads or None)
    scenes = max(1, int(args.seconds / 2.0))  # camera_sim: split eval, seed 0, a new scene every 2 s
    frames = [generate("eval", 0, i % scenes)[0] for i in range(runs + 2)]
    times = []
    for i, rgb in enumerate(frames):
        t0 = time.perf_counter()
        runtime.describe(rgb, max_new_tokens=args.max_new_tokens)
        if i >= 2:  # warm-up
            times.append(time.perf_counter() - t0)
    runtime.close()
    return {"p50_ms": 1000 * float(np.percentile(times, 50)), "p95_ms": 1000 * float(np.percentile(times, 95))}


def shm_in_use() -> set[str]:
    """/dev/shm files some live process has mapped (not ours to remove)."""
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


RSS_GOAL_MB = 400  # issue 20: the describer holding a bundle, not PyTorch


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident memory now (VmRSS) or the peak so far (VmHWM) of a process, in MB."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


# ------------------------------------------------------------------ a camera with bad frames mixed in

BAD_RAW = ("wrong_encoding", "short_data", "zero_size", "huge_declared", "short_step")
BAD_COMPRESSED = ("truncated_jpeg", "garbage", "empty", "truncated_png")


def bad_image(kind: str, good):
    """A sensor_msgs/Image the describer must reject, made from a good one (`good`)."""
    from sensor_msgs.msg import Image

    msg = Image(height=good.height, width=good.width, encoding=good.encoding, step=good.step)
    msg.data = good.data
    if kind == "wrong_encoding":
        msg.encoding = "yuv422"
    elif kind == "short_data":
        msg.data = good.data[: len(good.data) // 2]
    elif kind == "zero_size":
        msg.height = msg.width = msg.step = 0
        msg.data = good.data[:0]
    elif kind == "huge_declared":  # 8000x8000 declared, 640x480 worth of data
        msg.height = msg.width = 8000
        msg.step = 8000 * 3
    elif kind == "short_step":
        msg.step = good.width
    return msg


def bad_compressed(kind: str, good):
    import array

    import cv2
    from sensor_msgs.msg import CompressedImage

    msg = CompressedImage(format=good.format)
    if kind == "truncated_jpeg":
        msg.data = good.data[: len(good.data) // 3]
    elif kind == "garbage":
        msg.data = array.array("B", bytes(range(256)) * 8)
    elif kind == "empty":
        msg.data = good.data[:0]
    elif kind == "truncated_png":
        msg.format = "png"
        msg.data = array.array("B", cv2.imencode(".png", np.zeros((480, 640, 3), np.uint8))[1].tobytes()[:200])
    return msg


def camera_process(args) -> None:
    """The bad-frame camera (a child process): the scenes camera_sim shows (split eval, seed 0, a new
    one every 2 s) at --fps, 1 frame in --bad-every bad (at seeded random places) except in the
    last second (so the report shows descriptions after the last bad frame); waits for one
    subscription like camera_sim's wait_for_subscribers; writes a JSON summary to --out at the end."""
    import cv2
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import CompressedImage, Image

    from nanovla.data.scenes import generate
    from nanovla_ros.image_conversion import rgb_to_compressed_data, rgb_to_image_fields

    rclpy.init()
    node = rclpy.create_node("bench_camera")
    qos = QoSProfile(history=qos_profile_sensor_data.history, depth=qos_profile_sensor_data.depth,
                     reliability=ReliabilityPolicy.BEST_EFFORT, durability=qos_profile_sensor_data.durability)
    compressed = args.transport == "compressed"
    pub = node.create_publisher(CompressedImage if compressed else Image,
                                "image/compressed" if compressed else "image", qos)
    while pub.get_subscription_count() < 1:
        time.sleep(0.05)
    time.sleep(0.5)  # let the subscription match back
    kinds = BAD_COMPRESSED if compressed else BAD_RAW
    frames = int(args.fps * args.seconds)
    published, bad, bad_stamps, scene_index, good = 0, {k: 0 for k in kinds}, [], -1, None
    rng = np.random.default_rng(0)
    start = time.monotonic()
    for i in range(frames):
        target = start + i / args.fps
        wait = target - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        index = int((time.monotonic() - start) / 2.0)
        if index != scene_index:
            rgb = cv2.resize(generate("eval", 0, index)[0], (args.width, args.height), interpolation=cv2.INTER_LINEAR)
            if compressed:
                good = CompressedImage(format="jpeg")
                good.data = rgb_to_compressed_data(rgb, "jpeg", 90)
            else:
                h, w, step, data = rgb_to_image_fields(rgb, "rgb8")
                good = Image(height=h, width=w, encoding="rgb8", step=step)
                good.data = data
            scene_index = index
        msg = good
        # 1 in N at seeded random places: a fixed period would lock to the describer's tick (at 2 Hz it
        # takes every 15th frame, and every 10th frame bad is then never or always the one taken)
        if args.bad_every and rng.random() < 1.0 / args.bad_every and i < frames - args.fps:  # last second clean
            kind = kinds[sum(bad.values()) % len(kinds)]
            msg = bad_compressed(kind, good) if compressed else bad_image(kind, good)
            bad[kind] += 1
        msg.header.stamp, msg.header.frame_id = node.get_clock().now().to_msg(), "bench"
        pub.publish(msg)
        if msg is not good:
            bad_stamps.append(msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9)
        published += 1
    elapsed = time.monotonic() - start
    node.destroy_node()
    rclpy.try_shutdown()
    with open(args.out, "w") as f:
        json.dump({"published": published, "bad": sum(bad.values()), "bad_by_kind": bad, "seconds": elapsed,
                   "first_bad_stamp": bad_stamps[0] if bad_stamps else None,
                   "last_bad_stamp": bad_stamps[-1] if bad_stamps else None}, f)


def start_bad_camera(args, log_dir: str) -> tuple[subprocess.Popen, str]:
    out = os.path.join(log_dir, "camera.json")
    cmd = [sys.executable, os.path.abspath(__file__), "--camera-process", "--out", out, "--fps", str(args.fps),
           "--seconds", str(args.seconds), "--width", str(args.width), "--height", str(args.height),
           "--transport", args.transport, "--bad-every", str(args.bad_every)]
    env = dict(os.environ)
    env.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", os.path.join(  # camera_sim's large shared-memory segment
        INSTALL, "nanovla_ros", "share", "nanovla_ros", "config", "fastdds_large_frames.xml"))
    proc = subprocess.Popen(cmd, env=env, stdout=open(os.path.join(log_dir, "camera_sim.log"), "wb"),
                            stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    return proc, out


# ------------------------------------------------------------------ resident memory of every launched process


def descendants(pid: int) -> list[int]:
    """pid's child processes, recursively (ros2 launch -> describer)."""
    children: dict[int, list[int]] = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                text = f.read()
        except OSError:
            continue
        fields = text.rsplit(")", 1)[1].split()
        children.setdefault(int(fields[1]), []).append(int(stat.split("/")[2]))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def process_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return "?"
    names = [os.path.basename(a) for a in argv[:4]]
    if "launch" in names:
        return "ros2 launch"
    for name in ("describer", "camera_sim", "printer"):
        if name in names:
            return name
    return " ".join(names[:2])


class MemoryWatch:
    """Samples VmRSS and VmHWM of a root process and its descendants twice a second."""

    def __init__(self, root: int):
        self.root = root
        self.peak: dict[int, float] = {}  # pid -> VmHWM (MB), the kernel's own peak
        self.names: dict[int, str] = {}
        self.peak_sum_rss = 0.0  # the largest sum of VmRSS seen at one sample
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def sample(self) -> None:
        total = 0.0
        for pid in [self.root] + descendants(self.root):
            rss, hwm = rss_mb(pid), rss_mb(pid, "VmHWM")
            if hwm == hwm:  # not nan: still alive
                self.peak[pid] = max(self.peak.get(pid, 0.0), hwm)
                self.names.setdefault(pid, process_name(pid))
                total += rss
        self.peak_sum_rss = max(self.peak_sum_rss, total)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.sample()

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        self.sample()
        per = {f"{self.names[pid]} (pid {pid})": round(mb, 1) for pid, mb in self.peak.items()}
        return {"peak_per_process_mb": per, "sum_of_peaks_mb": round(sum(self.peak.values()), 1),
                "peak_of_sum_mb": round(self.peak_sum_rss, 1)}


def start(executable: str, params: dict, log_path: str) -> subprocess.Popen:
    cmd = [os.path.join(INSTALL, "nanovla_ros", "lib", "nanovla_ros", executable), "--ros-args"]
    for key, value in params.items():
        text = ("true" if value else "false") if isinstance(value, bool) else (value if value != "" else "''")
        cmd += ["-p", f"{key}:={text}"]
    return subprocess.Popen(cmd, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def start_launch(log_path: str) -> subprocess.Popen:
    """`ros2 launch nanovla_ros vla.launch.py` with the launch file's defaults."""
    if shutil.which("ros2") is None:
        sys.exit("bench_ros: --launch needs the ros2 command and launch_ros (source a ROS 2 install; "
                 "they have no pip wheels)")
    return subprocess.Popen(["ros2", "launch", "nanovla_ros", "vla.launch.py"], stdout=open(log_path, "wb"),
                            stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def stop(proc: subprocess.Popen, launch: bool = False) -> None:
    if proc.poll() is None:
        if launch:  # Ctrl-C to launch alone: it stops its nodes itself
            proc.send_signal(signal.SIGINT)
        else:
            os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(30 if launch else 15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def run(args) -> dict:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor

    from nanovla_msgs.msg import SceneDescription

    print(f"measuring the model's own describe latency ({args.model or 'shipped model'}, {args.backend})...",
          flush=True)
    own = model_describe_latency(args)
    log_dir = tempfile.mkdtemp(prefix="nanovla_bench_ros_")
    shm_before = set(glob.glob("/dev/shm/fastdds_*"))
    params_before = set(glob.glob("/tmp/launch_params_*"))
    rclpy.init()
    node = rclpy.create_node("bench_ros")
    lock = threading.Lock()
    received: list[tuple[float, object]] = []
    diagnostics: dict[str, str] = {}

    def on_description(msg):
        with lock:
            received.append((time.time(), msg))

    def on_diagnostics(msg):
        for status in msg.status:
            if status.name.startswith("/describer"):
                with lock:
                    diagnostics.update({kv.key: kv.value for kv in status.values})

    node.create_subscription(SceneDescription, "description", on_description, 100)
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()

    frames = int(args.fps * args.seconds)
    describer_log = os.path.join(log_dir, "launch.log" if args.launch else "describer.log")
    if args.launch:
        describer = start_launch(describer_log)
    else:
        describer = start("describer", {
            "model": args.model, "backend": args.backend, "device": args.device, "threads": args.threads,
            "max_rate_hz": args.max_rate_hz, "max_new_tokens": args.max_new_tokens, "autostart": True,
            "image_topic": "image" if args.transport == "raw" else "",
            "compressed_image_topic": "image/compressed" if args.transport == "compressed" else "",
        }, describer_log)
    memory = MemoryWatch(describer.pid)  # the describer, or ros2 launch and what it starts
    camera = camera_report = None
    describer_pid = describer.pid
    try:
        deadline = time.monotonic() + 180
        while "active: describing" not in open(describer_log).read():
            if describer.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("bench_ros: the describer did not become active:\n"
                                 + open(describer_log).read()[-3000:])
            time.sleep(0.2)
        if args.launch:  # the describer is a child of ros2 launch
            memory.sample()
            describer_pid = next((pid for pid, name in memory.names.items() if name == "describer"), describer.pid)
        rss_start = rss_mb(describer_pid)
        if args.bad_every:
            camera, camera_report = start_bad_camera(args, log_dir)
        else:
            camera = start("camera_sim", {
                "rate_hz": args.fps, "width": args.width, "height": args.height, "transport": args.transport,
                "max_frames": frames, "wait_for_subscribers": 1, "scene_period_s": 2.0, "frame_id": "bench",
            }, os.path.join(log_dir, "camera_sim.log"))
        first_seen = None
        t_start = time.time()
        rss_after_warmup = None
        while camera.poll() is None:
            time.sleep(0.5)
            with lock:
                if received and first_seen is None:
                    first_seen = time.time()
            if first_seen and rss_after_warmup is None and time.time() - first_seen > 2.0:
                rss_after_warmup = rss_mb(describer_pid)
            if time.time() - t_start > args.seconds + 120:
                raise SystemExit("bench_ros: the camera did not finish:\n"
                                 + open(os.path.join(log_dir, "camera_sim.log")).read()[-2000:])
        camera_end = time.time()
        rss_end = rss_mb(describer_pid)
        rss_peak = rss_mb(describer_pid, "VmHWM")
        time.sleep(2.5)  # the last description and diagnostics
        describer_alive = rss_mb(describer_pid) == rss_mb(describer_pid)  # not nan
        processes = memory.stop()
    finally:
        memory.stop()  # again after a failure: harmless
        if camera is not None:
            stop(camera)
        stop(describer, launch=args.launch)
        executor.shutdown(timeout_sec=2)
        node.destroy_node()
        rclpy.try_shutdown()
        used = shm_in_use()
        for path in set(glob.glob("/dev/shm/fastdds_*")) - shm_before:
            if path not in used and path.removesuffix("_el") not in used:
                try:
                    os.unlink(path)
                except OSError:
                    pass
        if args.launch:
            for path in set(glob.glob("/tmp/launch_params_*")) - params_before:
                try:
                    os.unlink(path)
                except OSError:
                    pass

    with lock:
        bench = [(t, m) for t, m in received if m.header.frame_id == "bench"]
        diag = dict(diagnostics)
    if not bench:
        raise SystemExit("bench_ros: no descriptions; logs in " + log_dir)
    stamps = [m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 for _, m in bench]
    latency = [t - s for (t, _), s in zip(bench, stamps)]
    window = max(camera_end - stamps[0], 1e-6)  # first described frame to the camera's end
    frames_received = int(diag.get("frames_received", 0))
    if camera_report is not None:  # the bad-frame camera: what it really published
        with open(camera_report) as f:
            cam = json.load(f)
        frames = cam["published"]
    arrivals = [t for t, _ in bench]
    gaps = np.diff([t_start] + arrivals + [camera_end])  # from the camera's start to its end
    log = open(describer_log, errors="replace").read()
    report = {
        "config": {k: v for k, v in vars(args).items() if k not in ("out", "camera_process")},
        "frames_published": frames,
        "frames_received_by_describer": frames_received,
        "frames_lost_in_transport": frames - frames_received,
        "frames_described": len(bench),
        "frames_dropped": frames - len(bench),
        "frames_dropped_newer": int(diag.get("frames_dropped_newer", 0)),
        "frames_dropped_stale": int(diag.get("frames_dropped_stale", 0)),
        "frames_bad": int(diag.get("frames_bad", 0)),
        "descriptions_per_s": len(bench) / window,
        "latency_stamp_to_description_ms": {"p50": 1000 * float(np.percentile(latency, 50)),
                                            "p95": 1000 * float(np.percentile(latency, 95)),
                                            "max": 1000 * float(np.max(latency))},
        "describer_model_time_ms": {"p50": 1000 * float(np.percentile([m.latency_s for _, m in bench], 50)),
                                    "p95": 1000 * float(np.percentile([m.latency_s for _, m in bench], 95))},
        "frame_age_at_start_ms": {"p50": 1000 * float(np.percentile([m.frame_age_s for _, m in bench], 50)),
                                  "p95": 1000 * float(np.percentile([m.frame_age_s for _, m in bench], 95))},
        "model_describe_latency_ms": own,
        "p95_over_model_p95": float(np.percentile(latency, 95)) * 1000 / own["p95_ms"],
        "backend_used": bench[-1][1].backend,  # what `auto` chose (the describer's SceneDescription.backend)
        "model_used": bench[-1][1].model,
        "rss_mb": {"start": rss_start, "after_warmup": rss_after_warmup, "end": rss_end, "peak": rss_peak,
                   "goal": RSS_GOAL_MB},
        "rss_growth_pct": 100 * (rss_end - (rss_after_warmup or rss_start)) / (rss_after_warmup or rss_start),
        "sample_description": bench[-1][1].text,
        "describer_alive_at_end": describer_alive,
        "descriptions_per_10s": [int(np.sum((np.array(arrivals) >= t_start + 10 * i)
                                            & (np.array(arrivals) < t_start + 10 * (i + 1))))
                                 for i in range(int(np.ceil((camera_end - t_start) / 10)))],
        "longest_gap_between_descriptions_s": float(gaps[1:].max()) if len(gaps) > 1 else None,
        "bad_frame_log_lines": sum(1 for line in log.splitlines() if "bad Image frame" in line
                                   or "bad CompressedImage frame" in line),
        "processes": processes,  # peak resident memory of every process started (not the camera)
    }
    if camera_report is not None:
        report["bad_frames_published"] = cam["bad"]
        report["bad_frames_by_kind"] = cam["bad_by_kind"]
        report["descriptions_after_first_bad_frame"] = sum(
            1 for s in stamps if cam["first_bad_stamp"] is not None and s > cam["first_bad_stamp"])
        report["descriptions_after_last_bad_frame"] = sum(
            1 for s in stamps if cam["last_bad_stamp"] is not None and s > cam["last_bad_stamp"])
    return report


def print_table(r: dict) -> None:
    c = r["config"]
    rows = [
        ("camera", f"{c['width']}x{c['height']} {c['transport']} @ {c['fps']:g} FPS for {c['seconds']:g} s"),
        ("model / backend", f"{c['model'] or 'shipped default'} / {c['backend']} on {c['device']} "
                            f"(ran {r['backend_used']}: {r['model_used']})"),
        ("frames published", r["frames_published"]),
        ("frames received by describer", f"{r['frames_received_by_describer']} "
                                         f"({r['frames_lost_in_transport']} lost in transport)"),
        ("frames described", r["frames_described"]),
        ("frames dropped", f"{r['frames_dropped']} (newer frame arrived: {r['frames_dropped_newer']}, "
                           f"stale: {r['frames_dropped_stale']}, bad: {r['frames_bad']})"),
        ("descriptions / s", f"{r['descriptions_per_s']:.2f}"),
        ("stamp -> description p50 / p95", f"{r['latency_stamp_to_description_ms']['p50']:.0f} / "
                                           f"{r['latency_stamp_to_description_ms']['p95']:.0f} ms"),
        ("describer model time p50 / p95", f"{r['describer_model_time_ms']['p50']:.0f} / "
                                           f"{r['describer_model_time_ms']['p95']:.0f} ms"),
        ("model describe p50 / p95 (no ROS)", f"{r['model_describe_latency_ms']['p50_ms']:.0f} / "
                                              f"{r['model_describe_latency_ms']['p95_ms']:.0f} ms"),
        ("p95 / model p95 (aim <= 2)", f"{r['p95_over_model_p95']:.2f}"),
        ("describer RSS start / warm / end", f"{r['rss_mb']['start']:.0f} / {r['rss_mb']['after_warmup'] or 0:.0f} / "
                                             f"{r['rss_mb']['end']:.0f} MB"),
        ("describer peak RSS (goal <= 400 MB)", f"{r['rss_mb']['peak']:.0f} MB "
                                                f"({'met' if r['rss_mb']['peak'] <= RSS_GOAL_MB else 'NOT met'})"),
        ("RSS growth after warm-up (aim <= 5 %)", f"{r['rss_growth_pct']:+.1f} %"),
        ("last description", r["sample_description"][:70]),
        ("descriptions per 10 s", " ".join(str(n) for n in r["descriptions_per_10s"])),
        ("longest gap between descriptions", f"{r['longest_gap_between_descriptions_s']:.2f} s"),
        ("describer alive at the end", "yes" if r["describer_alive_at_end"] else "NO"),
    ]
    if "bad_frames_published" in r:
        rows += [
            ("bad frames published", f"{r['bad_frames_published']} "
                                     f"({', '.join(f'{k} {n}' for k, n in r['bad_frames_by_kind'].items())})"),
            ("bad frames converted and rejected", f"{r['frames_bad']} (the others: replaced by a newer frame first)"),
            ("'bad ... frame' log lines", f"{r['bad_frame_log_lines']} (one per reason per 5 s)"),
            ("descriptions after first / last bad", f"{r['descriptions_after_first_bad_frame']} / "
                                                    f"{r['descriptions_after_last_bad_frame']}"),
        ]
    for name, mb in r["processes"]["peak_per_process_mb"].items():
        rows.append((f"peak RSS {name}", f"{mb:.0f} MB"))
    rows.append(("peak RSS, sum over processes", f"{r['processes']['sum_of_peaks_mb']:.0f} MB (peak of the sampled "
                                                 f"sum: {r['processes']['peak_of_sum_mb']:.0f} MB; goal <= "
                                                 f"{RSS_GOAL_MB} MB)"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")


def main(argv=None):
    args = parse_args(argv)
    ensure_ros_environment()
    if args.camera_process:
        camera_process(args)
        return
    report = run(args)
    print_table(report)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=2)
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
