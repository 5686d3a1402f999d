"""Load and bad-input benchmark of `nanovla serve`: bursts of concurrent chat completions, some of
them bad, against a server started here with the CLI's defaults (or --url, one already running).

Each round sends --requests requests at once (--bad of them bad: a corrupt image, a text file as
an image, an http URL, no messages, an empty and an over-long question, an unknown model, a body
over the 8 MiB limit, a body that is not JSON, a bad max_tokens), the good ones a mix of plain and
streamed describes and questions about --images generated scenes. Printed: every good request
answered (200), every bad one a 4xx, p50/p95 latency seen by the clients, /health afterwards, and
the server's resident memory after the warm-up and after each round.

    source .venv/bin/activate
    python benchmarks/bench_serve.py                      # 3 rounds of 50 (10 bad), shipped model
    python benchmarks/bench_serve.py --url http://127.0.0.1:8000 --rounds 1
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="", help="a running server (default: start `nanovla serve` here)")
    p.add_argument("--serve-args", default="", help="extra `nanovla serve` flags, e.g. '--backend torch'")
    p.add_argument("--requests", type=int, default=50, help="requests per round, all sent at once")
    p.add_argument("--bad", type=int, default=10, help="bad requests among them")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--images", type=int, default=8, help="distinct generated scenes asked about")
    p.add_argument("--out", default="", help="also write the figures here as JSON")
    return p.parse_args(argv)


def post(url: str, body: bytes, timeout: float = 600.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, ConnectionError) as e:  # counted as a failure, not a crash
        return -1, str(e).encode()


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


def chat(image_url: str | None, question: str | None = None, **fields) -> dict:
    content = [] if image_url is None else [{"type": "image_url", "image_url": {"url": image_url}}]
    if question is not None:
        content.append({"type": "text", "text": question})
    return {"messages": [{"role": "user", "content": content}], **fields}


def scene_urls(count: int) -> list[str]:
    import cv2

    from nanovla.data.scenes import generate

    urls = []
    for i in range(count):
        image, _ = generate("eval", 99, i)
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
        urls.append("data:image/jpeg;base64," + base64.b64encode(jpeg.tobytes()).decode())
    return urls


def bad_bodies(image_url: str, model: str) -> list[tuple[str, bytes]]:
    js = lambda obj: json.dumps(obj).encode()  # noqa: E731
    corrupt = "data:image/jpeg;base64," + base64.b64encode(b"\xff\xd8\xff\xe0" + bytes(2000)).decode()
    text = "data:image/png;base64," + base64.b64encode(b"a text file, not a picture").decode()
    return [
        ("corrupt image", js(chat(corrupt, "what is this?", model=model))),
        ("text as image", js(chat(text, model=model))),
        ("http url", js(chat("http://192.0.2.1/frame.jpg", "what is this?", model=model))),
        ("no messages", js({"model": model, "messages": []})),
        ("empty question", js(chat(image_url, "  ", model=model))),
        ("over-long question", js(chat(image_url, "why? " * 200, model=model))),
        ("unknown model", js(chat(image_url, model="gpt-4o"))),
        ("body over limit", b'{"messages": "' + b"x" * (9 * 1024 * 1024) + b'"}'),
        ("not json", b'{"messages": [{"role": "user", '),
        ("bad max_tokens", js(chat(image_url, model=model, max_tokens=0))),
    ]


def good_bodies(urls: list[str], model: str, count: int) -> list[tuple[str, bytes]]:
    questions = [None, "how many objects are there?", "what colour is the cube?", "is there a ball?",
                 "what is on the left?"]
    bodies = []
    for i in range(count):
        question = questions[i % len(questions)]
        body = chat(urls[i % len(urls)], question, model=model, stream=i % 3 == 0, max_tokens=48)
        bodies.append(("stream" if body["stream"] else "plain", json.dumps(body).encode()))
    return bodies


def one(url: str, kind: str, name: str, body: bytes) -> dict:
    t0 = time.perf_counter()
    status, raw = post(url, body)
    ms = (time.perf_counter() - t0) * 1000
    ok = status == 200
    if ok and name == "stream":
        ok = raw.rstrip().endswith(b"data: [DONE]") and b'"error"' not in raw
    elif kind == "bad" and 400 <= status < 500:
        try:
            ok = bool(json.loads(raw)["error"]["message"])
        except (ValueError, KeyError, TypeError):
            ok = False
    return {"kind": kind, "name": name, "status": status, "ms": ms, "ok": ok}


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def run_round(url: str, good: list, bad: list) -> list[dict]:
    jobs = [("good", n, b) for n, b in good] + [("bad", n, b) for n, b in bad]
    order = np.random.default_rng(len(jobs)).permutation(len(jobs))  # bad ones mixed in, not at the end
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        return list(pool.map(lambda i: one(url, *jobs[i]), order))


def start_server(serve_args: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "nanovla.cli", "serve", "--port", str(port), *serve_args.split()]
    process = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"nanovla serve exited: {process.stderr.read()}")
        try:
            get_json(base + "/health")
            return process, base
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise SystemExit("nanovla serve did not answer /health within 600 s")


def main(argv=None) -> int:
    args = parse_args(argv)
    if not 0 < args.bad < args.requests:
        raise SystemExit("--bad must be between 1 and --requests - 1")
    process, base = (None, args.url.rstrip("/")) if args.url else start_server(args.serve_args)
    pid = process.pid if process is not None else None
    try:
        health = get_json(base + "/health")
        model = health["model"]
        url = base + "/v1/chat/completions"
        urls = scene_urls(args.images)
        all_bad = bad_bodies(urls[0], model)
        bad = [all_bad[i % len(all_bad)] for i in range(args.bad)]
        good = good_bodies(urls, model, args.requests - args.bad)
        for _ in range(2):  # warm-up: every code path once, then memory is measured from here
            run_round(url, good[:5], all_bad)
        rss = [rss_mb(pid)]
        results, wall = [], []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            results += run_round(url, good, bad)
            wall.append(time.perf_counter() - t0)
            rss.append(rss_mb(pid))
        health_after = get_json(base + "/health")
    finally:
        if process is not None:
            process.terminate()
            process.wait(30)

    goods = [r for r in results if r["kind"] == "good"]
    bads = [r for r in results if r["kind"] == "bad"]
    latencies = [r["ms"] for r in goods if r["ok"]]
    figures = {
        "server": {"model": model, "backend": health["backend"], "cpu": platform.processor() or platform.machine(),
                   "cores": os.cpu_count()},
        "rounds": args.rounds, "requests_per_round": args.requests, "bad_per_round": args.bad,
        "good_answered": f"{sum(r['ok'] for r in goods)}/{len(goods)}",
        "bad_refused_4xx": f"{sum(r['ok'] for r in bads)}/{len(bads)}",
        "bad_statuses": sorted({f"{r['name']}: {r['status']}" for r in bads}),
        "good_failures": [f"{r['name']}: {r['status']}" for r in goods if not r["ok"]],
        "latency_ms": {"p50": round(percentile(latencies, 50), 1), "p95": round(percentile(latencies, 95), 1),
                       "max": round(max(latencies), 1) if latencies else None},
        "bad_latency_ms_p95": round(percentile([r["ms"] for r in bads], 95), 1),
        "round_wall_s": [round(w, 2) for w in wall],
        "health_after": health_after["status"], "served": health_after["served"],
        "rss_mb_after_warmup_then_each_round": [None if m is None else round(m, 1) for m in rss],
    }
    print(f"good requests answered: {figures['good_answered']}  (plain and streamed, {args.images} scenes)")
    print(f"bad requests refused with a 4xx JSON error: {figures['bad_refused_4xx']}")
    for line in figures["bad_statuses"]:
        print(f"  {line}")
    print(f"latency of good requests, {args.requests} at once: p50 {figures['latency_ms']['p50']} ms, "
          f"p95 {figures['latency_ms']['p95']} ms (bad ones p95 {figures['bad_latency_ms_p95']} ms)")
    print(f"server afterwards: /health {figures['health_after']}, {figures['served']} answers served")
    print(f"server RSS (MB) after warm-up, then after each round: {figures['rss_mb_after_warmup_then_each_round']}")
    print(json.dumps(figures))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(figures, f, indent=2)
    failed = figures["good_failures"] or sum(r["ok"] for r in bads) != len(bads) or health_after["status"] != "ok"
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
