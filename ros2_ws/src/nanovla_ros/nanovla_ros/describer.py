"""The describer: a lifecycle node that describes the newest camera frame and answers questions.

Cameras: one (image_topic and/or compressed_image_topic, the default), or several (image_topics:
one topic per camera; a name ending in /compressed is a CompressedImage topic). Each camera's
newest frame is kept; every tick describes all cameras' newest frames in one batched pass
(Runtime.encode_batch + generate_batch) and publishes one SceneDescription per frame on
`description`, with that frame's header (stamp, frame_id), so consumers tell cameras apart by
frame_id. A bad frame from one camera is a one-line warning; the other cameras' frames of that
tick are still described.

Threads (a MultiThreadedExecutor plus one worker thread):
  - image callbacks (own mutually exclusive group) only put the message into its camera's
    one-frame slot; they never wait for the model, so the subscriptions keep receiving during
    inference;
  - the worker thread takes each camera's newest frame, skips those older than max_frame_age_s,
    converts, encodes and describes them in one pass, at most max_rate_hz passes per second;
  - the ask service and the ask_stream action (reentrant group) use the latest frame, reusing its
    image context when that frame was already encoded;
  - one lock serialises model use (a runtime is not assumed thread-safe).

Lifecycle: on_configure loads the model and creates the services, on_activate subscribes and
starts the worker, on_deactivate stops both, on_cleanup frees the model.
"""

from __future__ import annotations

import gc
import math
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import rclpy
import rclpy.exceptions
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, State, TransitionCallbackReturn
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header, String

from nanovla_msgs.action import AskStream
from nanovla_msgs.msg import SceneDescription
from nanovla_msgs.srv import Ask

from nanovla.runtime.prompts import DESCRIBE_PROMPT
from nanovla.runtime.base import BACKEND_CHOICES, BATCH_DECODE_CHOICES  # no torch: the backend loads in on_configure
from nanovla.model.tokenizer import check_question

from .frame_slot import Frame, FrameSlot
from .image_conversion import FrameError, compressed_to_rgb, image_to_rgb

BACKEND_NAMES = BACKEND_CHOICES
# parameters read when the model is loaded; changing them while configured would be silently ignored
LOAD_TIME_PARAMETERS = ("model", "backend", "device", "threads", "batch_decode", "image_topics", "image_topic",
                        "compressed_image_topic", "reliability", "qos_depth")
COMPRESSED_SUFFIX = "/compressed"  # image_transport's naming: <camera>/image_raw/compressed


def _describe(text: str, **range_or_flags) -> ParameterDescriptor:
    return ParameterDescriptor(description=text, **range_or_flags)


def _float_range(low: float, high: float) -> list[FloatingPointRange]:
    return [FloatingPointRange(from_value=low, to_value=high, step=0.0)]


def _int_range(low: int, high: int) -> list[IntegerRange]:
    return [IntegerRange(from_value=low, to_value=high, step=1)]


def _valid_topic(name: str) -> bool:
    return bool(name) and all(c.isalnum() or c in "_/~{}" for c in name)


PARAMETERS: dict[str, tuple[Any, ParameterDescriptor]] = {
    "model": ("", _describe("checkpoint or exported bundle directory; empty = the shipped default model")),
    "backend": ("auto", _describe(f"runtime backend: {', '.join(BACKEND_NAMES)}; auto = onnxruntime for a bundle "
                                  "(an empty model: the shipped int8 bundle), torch for a checkpoint")),
    "device": ("cpu", _describe("cpu, cuda or cuda:N")),
    "threads": (0, _describe("CPU threads for inference; 0 = the backend's default", integer_range=_int_range(0, 256))),
    "batch_decode": ("auto", _describe(
        f"several cameras: {', '.join(BATCH_DECODE_CHOICES)}; auto = decode the frames together where each answer "
        "stays what the frame alone gives (float models), else one at a time (int8 bundle: vision still batched); "
        "always = together even for the int8 bundle (faster; answers may then differ slightly)")),
    "prompt": (DESCRIBE_PROMPT, _describe("the instruction used to describe each frame")),
    "max_new_tokens": (64, _describe("longest description or answer, in tokens (a 6-object caption is 61)",
                                     integer_range=_int_range(1, 512))),
    "temperature": (0.0, _describe("sampling temperature; 0 = greedy (deterministic)",
                                   floating_point_range=_float_range(0.0, 5.0))),
    "max_rate_hz": (2.0, _describe("at most this many descriptions per second",
                                   floating_point_range=_float_range(0.01, 1000.0))),
    "max_frame_age_s": (1.0, _describe("frames older than this (now - header.stamp) are skipped; 0 = no limit",
                                       floating_point_range=_float_range(0.0, 3600.0))),
    # empty by default: [] would be a byte array to rclpy, so the type is dynamic and checked here
    "image_topics": ([], _describe("several cameras, one topic each, described in one batched pass per tick: "
                                   "sensor_msgs/Image, or CompressedImage for names ending in /compressed; "
                                   "[] = the single camera of image_topic / compressed_image_topic",
                                   dynamic_typing=True)),
    "image_topic": ("image", _describe("sensor_msgs/Image input (rgb8, bgr8, mono8, rgba8, bgra8); empty = off")),
    "compressed_image_topic": ("image/compressed",
                               _describe("sensor_msgs/CompressedImage input (JPEG/PNG); empty = off")),
    "reliability": ("best_effort", _describe("input QoS reliability: best_effort (sensor data) or reliable")),
    "qos_depth": (5, _describe("input QoS history depth (keep last); the node still processes only the newest",
                               integer_range=_int_range(1, 10))),
    "diagnostics_period_s": (1.0, _describe("period of /diagnostics messages",
                                            floating_point_range=_float_range(0.1, 60.0))),
    "autostart": (False, _describe("configure and activate by itself at startup (as a lifecycle manager would)",
                                   read_only=True)),
}


@dataclass
class EncodedFrame:
    seq: int
    header: Header
    context: Any


class QuestionError(Exception):
    """A question that cannot be answered now; the message says why (returned to the caller)."""


class Describer(LifecycleNode):
    def __init__(self, **kwargs):
        super().__init__("describer", **kwargs)
        self.add_on_set_parameters_callback(self._validate_parameters)
        for name, (default, descriptor) in PARAMETERS.items():
            self.declare_parameter(name, default, descriptor)

        self._image_group = MutuallyExclusiveCallbackGroup()
        self._question_group = ReentrantCallbackGroup()
        self._diagnostics_group = MutuallyExclusiveCallbackGroup()

        self._runtime = None
        self._model_lock = threading.Lock()
        self._slot = FrameSlot()
        self._latest: Frame | None = None  # newest frame received (for questions)
        self._encoded: EncodedFrame | None = None  # image context of the last encoded frame
        self._seq = 0
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()
        self._active = False
        self._configured = False
        self._image_subscriptions: list = []
        self._camera_topics: list[str] = []  # per camera (index = Frame.camera), for log lines
        self._last_batch = 0  # frames described in the last pass
        self._ask_service = None
        self._action_server = None
        self._description_pub = None
        self._text_pub = None

        self._stats_lock = threading.Lock()
        self._received = 0
        self._stale = 0
        self._bad = 0
        self._described = 0
        self._encoded_count = 0  # vision encodes (a frame's context is reused across questions)
        self._questions = 0
        self._errors = 0
        self._latency_sum = 0.0
        self._last_error = ""
        self._last_logged_error: dict[str, float] = {}

        # /diagnostics is absolute: one aggregator topic for all cameras' describers
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diagnostics_timer = self.create_timer(self.get_parameter("diagnostics_period_s").value,
                                                    self._publish_diagnostics, callback_group=self._diagnostics_group)
        if self.get_parameter("autostart").value:
            self._autostart_timer = self.create_timer(0.0, self._autostart)

    # ---------------------------------------------------------------- parameters

    def _validate_parameters(self, parameters) -> SetParametersResult:
        for p in parameters:
            reason = self._check_parameter(p.name, p.value)
            if reason:
                return SetParametersResult(successful=False, reason=f"{p.name}: {reason}")
        return SetParametersResult(successful=True)

    def _check_parameter(self, name: str, value) -> str | None:
        if name in LOAD_TIME_PARAMETERS and getattr(self, "_configured", False):
            return "is read when the model loads; deactivate and clean up the node, set it, then configure again"
        if name == "model" and value and not os.path.isdir(os.path.expanduser(value)):
            return f"{value}: no such directory (a checkpoint or an exported bundle)"
        if name == "backend" and value not in BACKEND_NAMES:
            return f"unknown backend {value!r}; choose one of {', '.join(BACKEND_NAMES)}"
        if name == "device" and not (value == "cpu" or value == "cuda" or
                                     (value.startswith("cuda:") and value[5:].isdigit())):
            return f"unknown device {value!r}; use cpu, cuda or cuda:N"
        if name == "prompt":
            try:
                check_question(value)
            except ValueError as e:
                return str(e)
        if name in ("image_topic", "compressed_image_topic"):
            other = "compressed_image_topic" if name == "image_topic" else "image_topic"
            other_value = self.get_parameter(other).value if self.has_parameter(other) else "set"
            if not value and not other_value and not self._image_topics():
                return "image_topic and compressed_image_topic cannot both be empty (unless image_topics is set)"
            if value and not _valid_topic(value):
                return f"{value!r} is not a valid topic name"
        if name == "image_topics":
            if value is not None and (not isinstance(value, (list, tuple)) or
                                      (value and not all(isinstance(t, str) for t in value))):
                return "a list of topic names, e.g. ['front/image_raw', 'rear/image_raw/compressed']"
            topics = list(value or [])
            for topic in topics:
                if not _valid_topic(topic):
                    return f"{topic!r} is not a valid topic name"
            if len(set(topics)) != len(topics):
                return "a topic is listed twice"
            if not topics and self.has_parameter("image_topic") and not self._param("image_topic") \
                    and not self._param("compressed_image_topic"):
                return "empty, and image_topic and compressed_image_topic are empty too: no camera"
        if name == "batch_decode" and value not in BATCH_DECODE_CHOICES:
            return f"{value!r}: use one of {', '.join(BATCH_DECODE_CHOICES)}"
        if name == "reliability" and value not in ("best_effort", "reliable"):
            return f"{value!r}: use best_effort or reliable"
        if isinstance(value, float) and not math.isfinite(value):
            return "must be finite"
        return None

    def _param(self, name: str):
        return self.get_parameter(name).value

    def _image_topics(self) -> list[str]:
        """image_topics as a list ([] when unset; an empty override reads as NOT_SET)."""
        if not self.has_parameter("image_topics"):
            return []
        return list(self._param("image_topics") or [])

    # ---------------------------------------------------------------- lifecycle

    def _autostart(self) -> None:
        self.destroy_timer(self._autostart_timer)
        self.get_logger().info("autostart: configuring")
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            self.get_logger().error("autostart: configure failed; the node stays unconfigured")
            return
        self.get_logger().info("autostart: activating")
        self.trigger_activate()

    def on_configure(self, state: State) -> TransitionCallbackReturn:
        from nanovla.runtime.base import RuntimeError_, load_runtime

        model = self._param("model") or None
        threads = self._param("threads") or None
        t0 = time.perf_counter()
        try:
            self._runtime = load_runtime(model, backend=self._param("backend"), device=self._param("device"),
                                         threads=threads)
        except (RuntimeError_, ImportError, OSError, ValueError) as e:
            self._note_error(f"cannot load the model: {e}")
            return TransitionCallbackReturn.FAILURE
        self._runtime.batch_decode = self._param("batch_decode")
        self.get_logger().info(f"loaded {self._runtime.model_path} with {self._runtime.backend} "
                               f"on {self._param('device')} in {time.perf_counter() - t0:.1f} s")
        self._description_pub = self.create_lifecycle_publisher(SceneDescription, "description", 10)
        self._text_pub = self.create_lifecycle_publisher(String, "description/text", 10)
        self._ask_service = self.create_service(Ask, "ask", self._on_ask, callback_group=self._question_group)
        self._action_server = ActionServer(self, AskStream, "ask_stream", execute_callback=self._on_ask_stream,
                                           goal_callback=self._on_goal, cancel_callback=lambda _: CancelResponse.ACCEPT,
                                           callback_group=self._question_group)
        self._configured = True
        return super().on_configure(state)

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        qos = QoSProfile(history=qos_profile_sensor_data.history, depth=self._param("qos_depth"),
                         reliability=(ReliabilityPolicy.RELIABLE if self._param("reliability") == "reliable"
                                      else ReliabilityPolicy.BEST_EFFORT),
                         durability=qos_profile_sensor_data.durability)
        topics = []
        cameras = self._image_topics()
        if cameras:  # several cameras: one slot each
            for camera, topic in enumerate(cameras):
                compressed = topic.endswith(COMPRESSED_SUFFIX)
                self._image_subscriptions.append(self.create_subscription(
                    CompressedImage if compressed else Image, topic,
                    lambda m, c=compressed, i=camera: self._on_frame(m, c, i), qos, callback_group=self._image_group))
                topics.append(self._image_subscriptions[-1].topic_name)
        else:  # one camera, raw and/or compressed into one slot (as before image_topics)
            if self._param("image_topic"):
                self._image_subscriptions.append(self.create_subscription(
                    Image, self._param("image_topic"), lambda m: self._on_frame(m, False), qos,
                    callback_group=self._image_group))
                topics.append(self._image_subscriptions[-1].topic_name)
            if self._param("compressed_image_topic"):
                self._image_subscriptions.append(self.create_subscription(
                    CompressedImage, self._param("compressed_image_topic"), lambda m: self._on_frame(m, True), qos,
                    callback_group=self._image_group))
                topics.append(self._image_subscriptions[-1].topic_name)
        self._camera_topics = topics if cameras else [" and ".join(topics)]
        self._slot.reopen(max(1, len(cameras)))
        self._stop.clear()
        self._active = True
        self._worker = threading.Thread(target=self._work, name="describer-worker", daemon=True)
        self._worker.start()
        what = (f"{len(cameras)} cameras in one pass per tick ({', '.join(topics)})" if cameras
                else " and ".join(topics))
        self.get_logger().info(f"active: describing {what} at most {self._param('max_rate_hz'):g} Hz")
        return super().on_activate(state)

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        self._stop_work()
        return super().on_deactivate(state)

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        self._stop_work()
        self._release()
        return super().on_cleanup(state)

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        self._stop_work()
        self._release()
        return super().on_shutdown(state)

    def on_error(self, state: State) -> TransitionCallbackReturn:
        self._stop_work()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _stop_work(self) -> None:
        self._active = False
        self._stop.set()
        self._slot.close()
        for sub in self._image_subscriptions:
            try:
                self.destroy_subscription(sub)
            except Exception:  # context already shut down (process exit)
                pass
        self._image_subscriptions = []
        if self._worker is not None:
            self._worker.join(timeout=30.0)
            self._worker = None

    def _release(self) -> None:
        """Free the model and everything made in on_configure (on_cleanup)."""
        if self._action_server is not None:
            self._action_server.destroy()
            self._action_server = None
        if self._ask_service is not None:
            self.destroy_service(self._ask_service)
            self._ask_service = None
        for pub in (self._description_pub, self._text_pub):
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
        self._description_pub = self._text_pub = None
        with self._model_lock:
            if self._runtime is not None:
                self._runtime.close()
            self._runtime = None
            self._encoded = None
            self._latest = None
        self._configured = False
        gc.collect()

    def close(self) -> None:
        """Stop the worker and free the model whatever the state (process exit)."""
        self._stop_work()
        try:
            self._release()
            self.destroy_node()
        except Exception:  # the context may already be shut down by the signal handler
            pass

    # ---------------------------------------------------------------- frames

    def _on_frame(self, msg, compressed: bool, camera: int = 0) -> None:
        """Executor thread: keep only each camera's newest frame; the worker does the rest."""
        if not self._active:
            return
        with self._stats_lock:
            self._seq += 1
            self._received += 1
            frame = Frame(self._seq, msg, compressed, time.monotonic(), camera)
        self._latest = frame
        self._slot.put(frame)

    def _frame_age(self, header: Header) -> float:
        """now - header.stamp in seconds; 0 for an unstamped frame or a stamp from the future."""
        stamp_ns = header.stamp.sec * 1_000_000_000 + header.stamp.nanosec
        if stamp_ns == 0:
            return 0.0
        return max(0.0, (self.get_clock().now().nanoseconds - stamp_ns) / 1e9)

    def _to_rgb(self, frame: Frame):
        return compressed_to_rgb(frame.msg) if frame.compressed else image_to_rgb(frame.msg)

    def _work(self) -> None:
        next_allowed = 0.0
        while not self._stop.is_set():
            wait = next_allowed - time.monotonic()
            if wait > 0 and self._stop.wait(wait):  # newer frames replace older ones meanwhile
                break
            frames = self._slot.take_all(timeout=0.5)  # each camera's newest
            if not frames or not self._active:
                continue
            fresh, ages = [], []
            max_age = self._param("max_frame_age_s")
            for frame in frames:
                age = self._frame_age(frame.msg.header)
                if max_age > 0 and age > max_age:
                    with self._stats_lock:
                        self._stale += 1
                else:
                    fresh.append(frame)
                    ages.append(age)
            if not fresh:
                continue
            started = time.monotonic()
            try:
                self._describe(fresh, ages)
            except Exception as e:  # a model failure must not kill the worker; it shows in diagnostics
                self._note_error(f"describing frame failed: {type(e).__name__}: {e}")
            next_allowed = started + 1.0 / self._param("max_rate_hz")

    def _describe(self, frames: list[Frame], ages: list[float]) -> None:
        """All cameras' newest frames in one pass: convert each (a bad frame is skipped with a
        warning, the others go on), encode them in one batch, generate for all together, publish
        one SceneDescription per frame with its own header."""
        t0 = time.perf_counter()
        good, rgbs = [], []
        for frame, age in zip(frames, ages):
            try:
                rgbs.append(self._to_rgb(frame))
                good.append((frame, age))
            except FrameError as e:
                self._note_bad_frame(frame, str(e))
        if not good:
            return
        try:
            answers, model_path, backend = self._run_batch([f for f, _ in good], rgbs)
        except Exception as e:
            if len(good) == 1:
                raise
            # one frame may have broken the batch: describe each alone so the others still come out
            self._note_error(f"describing {len(good)} frames in one pass failed ({type(e).__name__}: {e}); "
                             "describing them one at a time")
            for (frame, age), rgb in zip(good, rgbs):
                try:
                    self._describe([frame], [age])
                except Exception as e1:
                    self._note_error(f"describing frame failed: {type(e1).__name__}: {e1}")
            return
        if not self._active:
            return
        latency = time.perf_counter() - t0  # the whole pass's: every frame of it came out at once
        for (frame, age), answer in zip(good, answers):
            msg = SceneDescription(header=frame.msg.header, text=answer.text, model=model_path, backend=backend,
                                   latency_s=latency, frame_age_s=age)
            self._description_pub.publish(msg)
            self._text_pub.publish(String(data=answer.text))
        with self._stats_lock:
            self._described += len(good)
            self._latency_sum += latency * len(good)
            self._last_batch = len(good)

    def _run_batch(self, frames: list[Frame], rgbs: list):
        with self._model_lock:
            if self._runtime is None:
                return [], "", ""
            contexts = self._runtime.encode_batch(rgbs)
            newest = max(range(len(frames)), key=lambda i: frames[i].seq)  # what a question asks about
            self._encoded = EncodedFrame(frames[newest].seq, frames[newest].msg.header, contexts[newest])
            self._encoded_count += len(contexts)
            answers = self._runtime.generate_batch(contexts, self._param("prompt"),
                                                   max_new_tokens=self._param("max_new_tokens"),
                                                   temperature=self._param("temperature"),
                                                   cancel=lambda: not self._active)
            return answers, self._runtime.model_path, self._runtime.backend

    def _note_bad_frame(self, frame: Frame, reason: str) -> None:
        with self._stats_lock:
            self._bad += 1
            self._last_error = f"bad frame: {reason}"
        kind = "CompressedImage" if frame.compressed else "Image"
        topics = self._camera_topics
        where = f" on {topics[frame.camera]}" if frame.camera < len(topics) and len(topics) > 1 else ""
        self._log_error(f"bad {kind} frame{where} (frame_id {frame.msg.header.frame_id!r}) skipped: {reason}",
                        warning=True)

    def _note_error(self, message: str) -> None:
        with self._stats_lock:
            self._errors += 1
            self._last_error = message
        self._log_error(message)

    def _log_error(self, message: str, warning: bool = False) -> None:
        """Log each new reason; repeat an identical one at most every 5 s (a broken camera at 30 FPS)."""
        now = time.monotonic()
        logged = self._last_logged_error  # message -> when it was last logged (two broken cameras alternate)
        if now - logged.get(message, -1e9) > 5.0:
            (self.get_logger().warning if warning else self.get_logger().error)(message)
            for old in [m for m, t in logged.items() if now - t > 5.0]:
                del logged[old]
            logged[message] = now

    # ---------------------------------------------------------------- questions

    def _answer(self, question: str, max_new_tokens: int, on_token=None):
        """(answer, header) about the latest frame; reuses its image context when already encoded."""
        if not self._active:
            raise QuestionError("the describer is not active (configure and activate it first)")
        try:
            question = check_question(question)
        except ValueError as e:
            raise QuestionError(str(e)) from None
        frame = self._latest
        if frame is None:
            raise QuestionError("no camera frame received yet")
        max_age = self._param("max_frame_age_s")
        age = self._frame_age(frame.msg.header)
        if max_age > 0 and age > max_age:
            raise QuestionError(f"the latest frame is {age:.1f} s old (max_frame_age_s = {max_age:g})")
        with self._model_lock:
            if self._runtime is None:
                raise QuestionError("no model loaded")
            encoded = self._encoded
            if encoded is None or encoded.seq != frame.seq:
                try:
                    rgb = self._to_rgb(frame)
                except FrameError as e:
                    self._note_bad_frame(frame, str(e))
                    raise QuestionError(f"the latest frame is unusable: {e}") from None
                encoded = self._encoded = EncodedFrame(frame.seq, frame.msg.header, self._runtime.encode(rgb))
                self._encoded_count += 1
            try:
                answer = self._runtime.generate(encoded.context, question, max_new_tokens=max_new_tokens,
                                                temperature=self._param("temperature"), on_token=on_token)
            except ValueError as e:  # refused by the runtime after all
                raise QuestionError(str(e)) from None
        with self._stats_lock:
            self._questions += 1
        return answer, encoded.header

    def _on_ask(self, request: Ask.Request, response: Ask.Response) -> Ask.Response:
        t0 = time.perf_counter()
        try:
            answer, header = self._answer(request.question, self._param("max_new_tokens"))
        except QuestionError as e:
            response.success, response.message = False, str(e)
            return response
        except Exception as e:
            self._note_error(f"answering failed: {type(e).__name__}: {e}")
            response.success, response.message = False, f"answering failed: {e}"
            return response
        response.success, response.answer, response.header = True, answer.text, header
        response.latency_s = time.perf_counter() - t0
        return response

    def _on_goal(self, goal: AskStream.Goal) -> GoalResponse:
        if not self._active or not goal.question.strip():
            return GoalResponse.REJECT
        return GoalResponse.ACCEPT

    def _on_ask_stream(self, goal_handle) -> AskStream.Result:
        t0 = time.perf_counter()
        request = goal_handle.request
        max_new_tokens = request.max_new_tokens or self._param("max_new_tokens")
        count = [0]

        def on_token(token_id: int, text: str):
            if goal_handle.is_cancel_requested or not self._active:
                return False  # stops generation at this token
            count[0] += 1
            goal_handle.publish_feedback(AskStream.Feedback(text_so_far=text, tokens=count[0]))
            return None

        result = AskStream.Result()
        try:
            answer, header = self._answer(request.question, max_new_tokens, on_token)
        except Exception as e:
            self.get_logger().warning(f"ask_stream: {e}")
            result.answer = f"error: {e}"
            goal_handle.abort()
            return result
        result.answer, result.header, result.tokens = answer.text, header, len(answer.token_ids)
        result.latency_s = time.perf_counter() - t0
        if goal_handle.is_cancel_requested:
            goal_handle.canceled()
        elif answer.stopped:
            goal_handle.abort()  # deactivated mid-answer
        else:
            goal_handle.succeed()
        return result

    # ---------------------------------------------------------------- diagnostics

    def _publish_diagnostics(self) -> None:
        with self._stats_lock:
            values = {
                "state": "active" if self._active else ("inactive" if self._configured else "unconfigured"),
                "frames_received": self._received,
                "frames_dropped": self._slot.replaced + self._stale,
                "frames_dropped_newer": self._slot.replaced,  # replaced by a newer frame before processing
                "frames_dropped_stale": self._stale,  # older than max_frame_age_s
                "frames_bad": self._bad,
                "frames_described": self._described,
                "frames_encoded": self._encoded_count,
                "questions_answered": self._questions,
                "errors": self._errors,
                "mean_latency_ms": round(1000 * self._latency_sum / self._described, 1) if self._described else 0.0,
                "cameras": len(self._camera_topics),
                "frames_in_last_pass": self._last_batch,
                "last_error": self._last_error,
            }
            bad, errors = self._bad, self._errors
        runtime = self._runtime
        values["model"] = runtime.model_path if runtime is not None else (self._param("model") or "default")
        values["backend"] = runtime.backend if runtime is not None else self._param("backend")
        status = DiagnosticStatus(name=f"{self.get_fully_qualified_name()}: describer",
                                  hardware_id=str(values["model"]))
        if errors and runtime is None:
            status.level, status.message = DiagnosticStatus.ERROR, self._last_error
        elif bad or errors:
            status.level, status.message = DiagnosticStatus.WARN, self._last_error
        else:
            status.level, status.message = DiagnosticStatus.OK, str(values["state"])
        status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self._diagnostics_pub.publish(array)


def main(args=None):
    rclpy.init(args=args)
    node = None
    try:
        node = Describer()
        executor = MultiThreadedExecutor(num_threads=4)
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except rclpy.exceptions.InvalidParameterValueException as e:
        # an invalid value in the params file or on the command line: one line, not a traceback
        print(f"describer: {e}", flush=True)
        raise SystemExit(2)
    finally:
        if node is not None:
            node.close()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
