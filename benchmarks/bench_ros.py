"""ROS 2 end-to-end benchmark: a 30 FPS camera into the describer, over DDS, for 60 s.

camera_sim and describer run as their installed executables (separate processes); this process
subscribes to `description` and `/diagnostics`. Reported: descriptions per second,
frame-to-description latency from the frame's stamp (p50/p95), the describer's own model time,
dropped frames (with where they went), and the describer's resident memory at start and end and
its peak (goal: <= 400 MB with the default backend, auto -> the shipped int8 bundle).
Before ROS starts, the model's own describe latency is measured in-process for comparison.

    source .venv/bin/activate && scripts/ros_setup.sh
    python benchmarks/bench_ros.py                      # 640x480 rgb8, 30 FPS, 60 s, shipped model
    python benchmarks/bench_ros.py --seconds 20 --width 1280 --height 720 --model runs/default/sft
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import signal
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


def start(executable: str, params: dict, log_path: str) -> subprocess.Popen:
    cmd = [os.path.join(INSTALL, "nanovla_ros", "lib", "nanovla_ros", executable), "--ros-args"]
    for key, value in params.items():
        text = ("true" if value else "false") if isinstance(value, bool) else (value if value != "" else "''")
        cmd += ["-p", f"{key}:={text}"]
    return subprocess.Popen(cmd, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(15)
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
    describer = start("describer", {
        "model": args.model, "backend": args.backend, "device": args.device, "threads": args.threads,
        "max_rate_hz": args.max_rate_hz, "max_new_tokens": args.max_new_tokens, "autostart": True,
        "image_topic": "image" if args.transport == "raw" else "",
        "compressed_image_topic": "image/compressed" if args.transport == "compressed" else "",
    }, os.path.join(log_dir, "describer.log"))
    camera = None
    try:
        deadline = time.monotonic() + 180
        while "active: describing" not in open(os.path.join(log_dir, "describer.log")).read():
            if describer.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("bench_ros: the describer did not become active:\n"
                                 + open(os.path.join(log_dir, "describer.log")).read()[-3000:])
            time.sleep(0.2)
        rss_start = rss_mb(describer.pid)
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
                rss_after_warmup = rss_mb(describer.pid)
            if time.time() - t_start > args.seconds + 120:
                raise SystemExit("bench_ros: camera_sim did not finish:\n"
                                 + open(os.path.join(log_dir, "camera_sim.log")).read()[-2000:])
        camera_end = time.time()
        rss_end = rss_mb(describer.pid)
        rss_peak = rss_mb(describer.pid, "VmHWM")
        time.sleep(2.5)  # the last description and diagnostics
    finally:
        if camera is not None:
            stop(camera)
        stop(describer)
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

    with lock:
        bench = [(t, m) for t, m in received if m.header.frame_id == "bench"]
        diag = dict(diagnostics)
    if not bench:
        raise SystemExit("bench_ros: no descriptions; logs in " + log_dir)
    stamps = [m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 for _, m in bench]
    latency = [t - s for (t, _), s in zip(bench, stamps)]
    window = max(camera_end - stamps[0], 1e-6)  # first described frame to the camera's end
    frames_received = int(diag.get("frames_received", 0))
    report = {
        "config": {k: v for k, v in vars(args).items() if k != "out"},
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
    }
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
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")


def main(argv=None):
    args = parse_args(argv)
    ensure_ros_environment()
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
