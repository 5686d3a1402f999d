"""The HTTP server of `nanovla serve`: an OpenAI-compatible chat API, the page at `/`, and (with a
ROS camera topic) the newest frame and its description.

    GET  /                       the page (static/index.html; every asset ships in the package)
    POST /v1/chat/completions    OpenAI chat completions, `stream: true` as server-sent events
    GET  /v1/models              the one served model
    GET  /health                 {"status": "ok", queue and cache figures}
    GET  /samples, /samples/NAME the shipped sample images (nanovla/assets/samples)
    GET  /ros/state, /ros/frame.jpg   the camera view (enabled: false without --ros-topic)

Every refusal is a 4xx with {"error": {"message", "type", "param", "code"}}, as OpenAI's API
answers; the model runs in one worker thread (worker.py) behind a bounded queue.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..model.paths import sample_images_dir
from ..runtime.prompts import DESCRIBE_PROMPT
from .chat import ApiError, ChatRequest, chunk, completion, completion_id, parse_chat_request, timings
from .worker import Job, ModelWorker, QueueFull, decode_checked, image_key

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
MAX_BODY_BYTES = 8 * 1024 * 1024  # a larger request body is refused with 413 before it is parsed
DRAIN_BYTES = 64 * 1024 * 1024  # an oversized body is read (and dropped) up to here so the 413 arrives
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def error_response(error: ApiError, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or a 413 once it passes `limit` (declared or actually sent).

    An oversized body is still read to its end (discarded, never kept), up to DRAIN_BYTES: a server
    that closes with unread data makes the kernel reset the connection, and the client then loses
    the 413 it was sent. Past DRAIN_BYTES the connection is given up on."""
    declared = request.headers.get("content-length")
    size_text = f"of {declared} bytes " if declared is not None and declared.isdigit() else ""
    too_large = ApiError(413, f"request body {size_text}exceeds the limit of {limit} bytes", "invalid_request_error",
                         code="request_too_large")
    if declared is not None and declared.isdigit() and int(declared) > max(limit, DRAIN_BYTES):
        raise too_large
    chunks, size = [], 0
    async for piece in request.stream():
        size += len(piece)
        if size > DRAIN_BYTES:
            raise too_large
        if size <= limit:
            chunks.append(piece)
    if size > limit:
        raise too_large
    return b"".join(chunks)


def sse(obj: dict | str) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n"


def create_app(worker: ModelWorker, model_id: str, max_body_bytes: int = MAX_BODY_BYTES, camera=None,
               default_max_tokens: int = 64) -> FastAPI:
    """The app around a running worker. `camera` is a ros_camera.RosCamera or None."""
    live = {"seq": -1, "text": "", "latency_ms": 0.0, "error": ""}  # the camera's newest description

    async def describe_camera_frames():
        """Describe the newest camera frame whenever one is new and no request is waiting."""
        while True:
            await asyncio.sleep(0.2)
            frame = camera.newest()
            if frame is None or frame.seq == live["seq"] or not worker.idle():
                continue
            job = Job(image_key(frame.jpeg), frame.jpeg, DESCRIBE_PROMPT, {"max_new_tokens": default_max_tokens},
                      rgb=frame.rgb)
            try:
                result = await asyncio.wrap_future(worker.submit(job))
                live.update(seq=frame.seq, text=result.text, latency_ms=round(result.latency_ms, 1), error="")
            except QueueFull:
                continue
            except Exception as e:  # a bad frame must not end the loop
                live.update(seq=frame.seq, text="", error=str(e).splitlines()[0] if str(e) else type(e).__name__)

    @asynccontextmanager
    async def lifespan(_app):
        task = asyncio.create_task(describe_camera_frames()) if camera is not None else None
        yield
        if task is not None:
            task.cancel()

    # no /docs or /redoc: their pages load scripts from a CDN, and the server must work offline
    app = FastAPI(title="nanovla", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.exception_handler(ApiError)
    async def api_error(_request, error: ApiError):
        return error_response(error)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, error: StarletteHTTPException):
        kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
        return error_response(ApiError(error.status_code, str(error.detail), kind))

    @app.exception_handler(Exception)
    async def internal_error(_request, error: Exception):
        return error_response(ApiError(500, f"internal error: {type(error).__name__}: {error}", "server_error"))

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(os.path.join(STATIC_DIR, "index.html"))

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_id, "backend": worker.runtime.backend, **worker.stats()}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": 0, "owned_by": "nanovla"}]}

    @app.get("/samples")
    async def samples():
        return {"samples": _sample_names()}

    @app.get("/samples/{name}")
    async def sample(name: str):
        if name not in _sample_names():  # only the listed files: no path from the URL reaches the disk
            raise ApiError(404, f"no sample named {name!r} (GET /samples lists them)", "not_found_error")
        return FileResponse(os.path.join(sample_images_dir(), name))

    @app.get("/ros/state")
    async def ros_state():
        if camera is None:
            return {"enabled": False}
        frame = camera.newest()
        return {"enabled": True, "topic": camera.topic, "frames": camera.received, "errors": camera.errors,
                "last_error": camera.last_error, "frame_seq": None if frame is None else frame.seq,
                "frame_size": None if frame is None else [frame.rgb.shape[1], frame.rgb.shape[0]],
                "description": live}

    @app.get("/ros/frame.jpg")
    async def ros_frame():
        frame = camera.newest() if camera is not None else None
        if frame is None:
            raise ApiError(404, "no camera frame yet" if camera is not None else "started without --ros-topic",
                           "not_found_error")
        return Response(frame.jpeg, media_type="image/jpeg", headers={"X-Frame-Seq": str(frame.seq),
                                                                     "Cache-Control": "no-store"})

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        raw = await read_body(request, max_body_bytes)
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ApiError(400, f"the request body is not JSON ({e})") from None
        chat = parse_chat_request(body, model_id, default_max_tokens)
        job = await _job(chat)
        id_ = completion_id()
        if not chat.stream:
            result = await _wait(job)
            return completion(id_, model_id, result)
        return _stream(job, id_)

    async def _job(chat: ChatRequest) -> Job:
        key = image_key(chat.image_bytes)
        rgb = None
        if not worker.has_context(key):  # decode here, so a bad image is a 400 before it takes a queue slot
            try:
                rgb = await asyncio.to_thread(decode_checked, chat.image_bytes)
            except ValueError as e:
                raise ApiError(400, f"image_url: {e}", param="messages", code="invalid_image") from None
        return Job(key, chat.image_bytes, chat.question, chat.sampling, rgb=rgb)

    def _submit(job: Job):
        try:
            return worker.submit(job)
        except QueueFull as e:
            raise ApiError(503, str(e), "server_overloaded", code="queue_full") from None

    async def _wait(job: Job):
        future = _submit(job)
        try:
            return await asyncio.wrap_future(future)
        except ValueError as e:  # the runtime refused the question or image (e.g. too long for the context)
            raise ApiError(400, str(e).splitlines()[0]) from None
        except asyncio.CancelledError:
            job.cancelled.set()
            raise

    def _stream(job: Job, id_: str) -> StreamingResponse:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        job.on_text = lambda text: loop.call_soon_threadsafe(events.put_nowait, ("text", text))
        future = _submit(job)  # a full queue is a 503 before any event is sent
        future.add_done_callback(lambda f: loop.call_soon_threadsafe(events.put_nowait, ("done", f)))

        async def events_stream():
            sent = ""  # the text the client has; deltas extend it (the final answer is stripped)
            try:
                yield sse(chunk(id_, model_id, {"role": "assistant", "content": ""}))
                while True:
                    kind, value = await events.get()
                    if kind == "text":
                        text = value.lstrip().rstrip("\ufffd")  # hold back a half-decoded UTF-8 character
                        if text.startswith(sent) and len(text) > len(sent):
                            yield sse(chunk(id_, model_id, {"content": text[len(sent):]}))
                            sent = text
                        continue
                    error = value.exception()
                    if error is not None:
                        status = 400 if isinstance(error, ValueError) else 500
                        yield sse(ApiError(status, str(error).splitlines()[0] if str(error) else type(error).__name__,
                                           "invalid_request_error" if status == 400 else "server_error").body())
                    else:
                        result = value.result()
                        if result.text.startswith(sent) and len(result.text) > len(sent):
                            yield sse(chunk(id_, model_id, {"content": result.text[len(sent):]}))
                        yield sse(chunk(id_, model_id, {}, result.finish_reason, nanovla=timings(result)))
                    yield sse("[DONE]")
                    return
            finally:
                job.cancelled.set()  # the client went away mid-answer: the worker stops generating

        return StreamingResponse(events_stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app


def _sample_names() -> list[str]:
    folder = sample_images_dir()
    if not os.path.isdir(folder):
        return []
    return sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_SUFFIXES))


def model_id_of(runtime) -> str:
    """The id clients pass as `model`: the model directory's name (`default_model` when shipped)."""
    return os.path.basename(os.path.normpath(runtime.model_path)) or "nanovla"


def serve(runtime, host: str = "127.0.0.1", port: int = 8000, ros_topic: str = "", queue_size: int = 64,
          max_body_bytes: int = MAX_BODY_BYTES, max_tokens: int = 64, log=print) -> None:
    """Run the server until Ctrl-C (the runtime is loaded already, once, by the caller)."""
    import uvicorn

    camera = None
    if ros_topic:
        from .ros_camera import RosCamera  # needs rclpy; a clear error otherwise

        camera = RosCamera(ros_topic)
    worker = ModelWorker(runtime, queue_size=queue_size)
    app = create_app(worker, model_id_of(runtime), max_body_bytes, camera, max_tokens)
    log(f"nanovla serve: {model_id_of(runtime)} ({runtime.backend}) on http://{host}:{port}/"
        + (f", camera {ros_topic}" if ros_topic else ""))
    started = time.perf_counter()
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    finally:
        worker.close()
        if camera is not None:
            camera.close()
        log(f"nanovla serve: stopped after {time.perf_counter() - started:.0f}s, {worker.served} answers")
