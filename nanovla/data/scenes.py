"""Procedural tabletop scenes: what a robot's camera sees on a table or floor.

A scene is a small scene graph (objects with kind, colour, base point, size) rendered with
OpenCV into a 640x480 RGB frame: textured, unevenly lit background, soft shadows, partial
occlusion, sensor noise and blur. Everything is a pure function of the seed, so a split is
reproducible from (split, seed, index) alone and no data set is ever downloaded.

The scene graph is the ground truth: captions and question-answer pairs are derived from it in
`nanovla.data.language`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import cv2
import numpy as np

WIDTH, HEIGHT = 640, 480

KINDS = ("cube", "ball", "cylinder", "cone", "cup", "bottle", "box", "ring")
COLORS = {  # RGB, saturated enough to survive the lighting and noise below
    "red": (205, 35, 35),
    "orange": (245, 135, 25),
    "yellow": (235, 215, 35),
    "green": (40, 165, 55),
    "blue": (35, 75, 210),
    "purple": (125, 50, 175),
    "pink": (245, 125, 185),
    "white": (238, 238, 238),
}
COLOR_NAMES = tuple(COLORS)

# (colour, kind) pairs that never appear in `train` or `eval` scenes (nor in their questions);
# the `heldout` split is built around them to measure compositional generalisation.
HELDOUT_PAIRS = frozenset({
    ("red", "ball"), ("blue", "cube"), ("green", "cup"), ("yellow", "cone"),
    ("purple", "bottle"), ("orange", "ring"), ("pink", "box"), ("white", "cylinder"),
})
# every (colour, kind) pair, in a fixed order
ALL_PAIRS = tuple((c, k) for c in COLOR_NAMES for k in KINDS)
SPLITS = ("train", "eval", "heldout")
MAX_OBJECTS = 6


@dataclass
class SceneObject:
    kind: str
    color: str
    x: float  # base point (where the object touches the table), pixels
    y: float  # larger y = nearer the camera
    size: float  # apparent height scale in pixels
    bbox: list[float] = field(default_factory=list)  # [x0, y0, x1, y1], filled by the renderer

    @property
    def name(self) -> str:
        return f"{self.color} {self.kind}"

    @property
    def cx(self) -> float:
        return 0.5 * (self.bbox[0] + self.bbox[2])

    def to_json(self) -> dict:
        return {"kind": self.kind, "color": self.color, "bbox": [round(v, 1) for v in self.bbox]}


@dataclass
class Scene:
    objects: list[SceneObject]  # in drawing order: back to front
    width: int = WIDTH
    height: int = HEIGHT


def scene_seed(split: str, seed: int, index: int) -> int:
    """A stable 64-bit seed per (split, seed, index), so splits never share scenes."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    digest = hashlib.sha256(f"nanovla/{split}/{seed}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def allowed_pairs(split: str) -> list[tuple[str, str]]:
    pairs = list(ALL_PAIRS)
    if split == "heldout":
        return pairs  # held-out pairs are forced in below; others may accompany them
    return [p for p in pairs if p not in HELDOUT_PAIRS]


# ----------------------------------------------------------------------------- scene graph

def _object_extent(kind: str, size: float) -> tuple[float, float]:
    """Approximate (width, height) of an object's silhouette for placement checks."""
    aspect = {"cube": 1.0, "ball": 1.0, "cylinder": 0.7, "cone": 0.85, "cup": 1.05,
              "bottle": 0.45, "box": 1.7, "ring": 1.5}[kind]
    height = {"box": 0.65, "ring": 0.55, "bottle": 1.35, "cylinder": 1.15}.get(kind, 1.0) * size
    return aspect * size, height


def sample_scene(rng: np.random.Generator, split: str = "train") -> Scene:
    """Sample a scene graph: 0-6 objects, distinct (colour, kind) pairs, partial occlusion only."""
    pairs = allowed_pairs(split)
    n = int(rng.integers(1 if split == "heldout" else 0, MAX_OBJECTS + 1))
    chosen: list[tuple[str, str]] = []
    if split == "heldout":
        held = sorted(HELDOUT_PAIRS)
        chosen.append(held[int(rng.integers(len(held)))])
    while len(chosen) < n:
        p = pairs[int(rng.integers(len(pairs)))]
        if p not in chosen:
            chosen.append(p)
    rng.shuffle(chosen)

    objects: list[SceneObject] = []
    for color, kind in chosen:
        for _attempt in range(60):
            y = float(rng.uniform(0.42, 0.95)) * HEIGHT
            depth = (y - 0.42 * HEIGHT) / (0.53 * HEIGHT)  # 0 far .. 1 near
            size = float(rng.uniform(0.85, 1.15)) * (58 + 48 * depth)
            w, h = _object_extent(kind, size)
            x = float(rng.uniform(0.06 * WIDTH + w / 2, 0.94 * WIDTH - w / 2))
            box = (x - w / 2, y - h, x + w / 2, y)
            if all(_overlap_ratio(box, _rough_box(o)) < 0.3 for o in objects) and all(
                abs(x - o.x) > 14 or abs(y - o.y) > 30 for o in objects
            ):
                objects.append(SceneObject(kind=kind, color=color, x=x, y=y, size=size))
                break
        # an object that finds no free place is left out; the scene graph stays the truth
    objects.sort(key=lambda o: o.y)  # painter's order: far (small y) first
    return Scene(objects=objects)


def _rough_box(o: SceneObject) -> tuple[float, float, float, float]:
    w, h = _object_extent(o.kind, o.size)
    return (o.x - w / 2, o.y - h, o.x + w / 2, o.y)


def _overlap_ratio(a, b) -> float:
    """Intersection over the smaller box's area (how much of one hides behind the other)."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / max(smaller, 1e-6)


# ----------------------------------------------------------------------------- rendering

def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1] (bicubic upsampling of a coarse random grid)."""
    coarse = rng.uniform(-1, 1, size=(cells, max(2, cells * w // h))).astype(np.float32)
    return np.clip(cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC), -1.5, 1.5)


def _background(rng: np.random.Generator) -> tuple[np.ndarray, float]:
    h, w = HEIGHT, WIDTH
    horizon = float(rng.uniform(0.2, 0.34)) * h
    style = ("wood", "concrete", "tiles", "felt", "laminate")[int(rng.integers(5))]
    base = {
        "wood": (150, 105, 65), "concrete": (128, 128, 124), "tiles": (110, 112, 118),
        "felt": (60, 70, 92), "laminate": (165, 150, 130),
    }[style]
    base = np.array(base, np.float32) * rng.uniform(0.8, 1.1, size=3).astype(np.float32)
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    tex = 12 * _smooth_noise(rng, h, w, 6) + 5 * _smooth_noise(rng, h, w, 24)
    if style == "wood":
        warp = 25 * _smooth_noise(rng, h, w, 4)
        tex += 14 * np.sin((yy * 0.9 + warp) / rng.uniform(3.5, 7.0))
    elif style == "tiles":
        period = rng.uniform(70, 120)
        grout = (np.abs(((xx + 0.3 * yy) % period) - period / 2) > period / 2 - 2.5) | (
            (yy % (period * 0.6)) < 2.5)
        tex -= 35 * grout
    table = base[None, None, :] + tex[..., None]
    wall = np.array(rng.uniform(150, 215, size=3), np.float32)
    wall_img = wall[None, None, :] + 8 * _smooth_noise(rng, h, w, 3)[..., None] - 0.08 * yy[..., None]
    top = int(horizon)
    img = table
    img[:top] = wall_img[:top]
    img[top:top + 5] *= 0.6  # the table edge: a darker band at the horizon
    return img, horizon


def _shade(rgb: np.ndarray, factor: float) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.clip(np.asarray(rgb, np.float32) * factor, 0, 255))


def _poly(img, pts, color):
    cv2.fillPoly(img, [np.round(np.asarray(pts)).astype(np.int32)], color, lineType=cv2.LINE_AA)


def _ellipse(img, center, axes, color, start=0, end=360):
    cv2.ellipse(img, (int(round(center[0])), int(round(center[1]))),
                (max(1, int(round(axes[0]))), max(1, int(round(axes[1])))), 0, start, end, color, -1,
                lineType=cv2.LINE_AA)


def _draw_object(img: np.ndarray, o: SceneObject, rgb: np.ndarray, rng: np.random.Generator) -> list[float]:
    """Draw one object standing at (o.x, o.y); returns its bounding box [x0, y0, x1, y1]."""
    x, y, s = o.x, o.y, o.size
    c = rgb
    light, mid, dark = _shade(c, 1.12), _shade(c, 0.92), _shade(c, 0.62)
    w, h = _object_extent(o.kind, s)
    # soft contact shadow first (blurred later with the whole frame's blur)
    _ellipse(img, (x + 0.08 * w, y), (0.6 * w, 0.12 * w + 2), (35, 35, 35))
    k = o.kind
    if k in ("cube", "box"):
        depth = 0.28 * h
        fx0, fx1 = x - w / 2, x + w / 2 - depth * 0.6
        _poly(img, [(fx0, y), (fx1, y), (fx1, y - h + depth), (fx0, y - h + depth)], mid)
        _poly(img, [(fx1, y), (x + w / 2, y - depth * 0.7), (x + w / 2, y - h), (fx1, y - h + depth)], dark)
        _poly(img, [(fx0, y - h + depth), (fx1, y - h + depth), (x + w / 2, y - h),
                    (fx0 + depth * 0.6, y - h)], light)
        return [fx0, y - h, x + w / 2, y]
    if k == "ball":
        r = w / 2
        cy = y - r
        _ellipse(img, (x, cy), (r, r), dark)
        _ellipse(img, (x - 0.12 * r, cy - 0.12 * r), (0.85 * r, 0.85 * r), mid)
        _ellipse(img, (x - 0.35 * r, cy - 0.35 * r), (0.3 * r, 0.3 * r), light)
        return [x - r, y - 2 * r, x + r, y]
    if k in ("cylinder", "cup"):
        rx, ry = w / 2, 0.16 * w
        top = y - h + ry
        if k == "cup":  # slightly tapered, with a handle on the right
            hx = x + rx * 0.95
            cv2.ellipse(img, (int(hx), int(y - h * 0.5)), (int(0.32 * w), int(0.24 * h)), 0, -90, 90, dark,
                        max(2, int(0.09 * w)), lineType=cv2.LINE_AA)
            _poly(img, [(x - rx, top), (x + rx, top), (x + 0.8 * rx, y), (x - 0.8 * rx, y)], mid)
            _ellipse(img, (x, y), (0.8 * rx, 0.8 * ry), mid)
            _ellipse(img, (x, top), (rx, ry), light)
            _ellipse(img, (x, top + 0.1 * ry), (0.82 * rx, 0.7 * ry), _shade(c, 0.35))
            return [x - rx, top - ry, x + rx + 0.32 * w + 0.05 * w, y + 0.8 * ry]
        _ellipse(img, (x, y), (rx, ry), dark)
        _poly(img, [(x - rx, top), (x + rx, top), (x + rx, y), (x - rx, y)], mid)
        _poly(img, [(x + 0.35 * rx, top), (x + rx, top), (x + rx, y), (x + 0.35 * rx, y)], dark)
        _ellipse(img, (x, top), (rx, ry), light)
        return [x - rx, top - ry, x + rx, y + ry]
    if k == "cone":
        rx, ry = w / 2, 0.15 * w
        _ellipse(img, (x, y), (rx, ry), dark)
        _poly(img, [(x - rx, y), (x + rx, y), (x, y - h)], mid)
        _poly(img, [(x + 0.2 * rx, y + 0.3 * ry), (x + rx, y), (x, y - h)], dark)
        return [x - rx, y - h, x + rx, y + ry]
    if k == "bottle":
        rx = w / 2
        shoulder = y - 0.62 * h
        neck = 0.36 * rx
        _poly(img, [(x - rx, y), (x + rx, y), (x + rx, shoulder), (x + neck, shoulder - 0.18 * h),
                    (x + neck, y - h), (x - neck, y - h), (x - neck, shoulder - 0.18 * h), (x - rx, shoulder)], mid)
        _poly(img, [(x + 0.4 * rx, y), (x + rx, y), (x + rx, shoulder), (x + 0.4 * rx, shoulder - 0.06 * h)], dark)
        _poly(img, [(x - neck * 1.15, y - h), (x + neck * 1.15, y - h), (x + neck * 1.15, y - 0.9 * h),
                    (x - neck * 1.15, y - 0.9 * h)], (40, 40, 40))
        _ellipse(img, (x - 0.5 * rx, y - 0.35 * h), (0.12 * rx, 0.2 * h), light)
        return [x - rx, y - h, x + rx, y]
    if k == "ring":  # a torus lying on the table
        rx, ry = w / 2, 0.42 * h
        cy = y - ry
        _ellipse(img, (x, cy + 0.15 * ry), (rx, ry), dark)
        _ellipse(img, (x, cy), (rx, ry), mid)
        _ellipse(img, (x - 0.05 * rx, cy - 0.08 * ry), (0.85 * rx, 0.8 * ry), light, 180, 300)
        return [x - rx, cy - ry, x + rx, cy + 1.15 * ry]
    raise ValueError(f"unknown kind {k!r}")


def render_scene(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Render a scene graph into an (H, W, 3) uint8 RGB frame; fills each object's bbox."""
    img, _horizon = _background(rng)
    canvas = np.clip(img, 0, 255).astype(np.uint8)
    for o in scene.objects:
        rgb = np.asarray(COLORS[o.color], np.float32) * rng.uniform(0.88, 1.08, size=3)
        layer = canvas.copy()
        if o.kind == "ring":
            bbox = _draw_object(layer, o, rgb, rng)
            # punch the ring's hole: the background shows through
            rx, ry = 0.45 * (bbox[2] - bbox[0]) / 2, 0.38 * (bbox[3] - bbox[1]) / 2
            mask = np.zeros(canvas.shape[:2], np.uint8)
            _ellipse(mask, (o.x, (bbox[1] + bbox[3]) / 2 - 0.04 * (bbox[3] - bbox[1])), (rx, ry), 255)
            layer[mask > 0] = canvas[mask > 0]
        else:
            bbox = _draw_object(layer, o, rgb, rng)
        canvas = layer
        o.bbox = [float(np.clip(bbox[0], 0, WIDTH)), float(np.clip(bbox[1], 0, HEIGHT)),
                  float(np.clip(bbox[2], 0, WIDTH)), float(np.clip(bbox[3], 0, HEIGHT))]
    out = canvas.astype(np.float32)
    # uneven lighting: a soft spot light plus a global gain and a colour cast
    yy = np.arange(HEIGHT, dtype=np.float32)[:, None]
    xx = np.arange(WIDTH, dtype=np.float32)[None, :]
    lx, ly = rng.uniform(-0.2, 1.2) * WIDTH, rng.uniform(-0.3, 0.8) * HEIGHT
    sigma = rng.uniform(0.5, 1.1) * WIDTH
    spot = np.exp(-((xx - lx) ** 2) / (2 * sigma**2)) * np.exp(-((yy - ly) ** 2) / (2 * sigma**2))
    gain = rng.uniform(0.55, 0.8) + rng.uniform(0.25, 0.55) * spot
    out *= gain[..., None] * rng.uniform(0.92, 1.08, size=3).astype(np.float32)[None, None, :]
    # blur (focus or motion), then sensor noise
    r = rng.random()
    if r < 0.35:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.6, 1.6))
    elif r < 0.5:
        n = int(rng.integers(5, 11))
        kernel = np.zeros((n, n), np.float32)
        kernel[n // 2, :] = 1.0 / n
        rot = cv2.getRotationMatrix2D((n / 2 - 0.5, n / 2 - 0.5), float(rng.uniform(0, 180)), 1.0)
        kernel = cv2.warpAffine(kernel, rot, (n, n))
        out = cv2.filter2D(out, -1, kernel / max(kernel.sum(), 1e-6))
    else:
        out = cv2.GaussianBlur(out, (0, 0), 0.5)
    out += rng.standard_normal(size=out.shape, dtype=np.float32) * np.float32(rng.uniform(2, 8))
    return np.clip(out, 0, 255).astype(np.uint8)


def generate(split: str, seed: int, index: int) -> tuple[np.ndarray, Scene]:
    """Scene number `index` of (split, seed): (RGB uint8 image, scene graph)."""
    rng = np.random.default_rng(scene_seed(split, seed, index))
    scene = sample_scene(rng, split)
    image = render_scene(scene, rng)
    return image, scene
