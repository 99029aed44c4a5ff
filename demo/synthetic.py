"""Deterministic synthetic images with a real semantic hierarchy (family → shape) and visual attributes.

Every image shows one shape (the class) drawn with a colour, a texture, a size and a background (the attributes).
The same renderer makes the test fixtures' datasets and the captioned pre-training corpus of the bundled tiny CLIP
model, so all of them share one visual vocabulary. `render_shifted` draws the same content through another camera
(`Shift`: colour cast, jitter, pixel noise, other sizes, unseen backgrounds): the demo dataset's look.
"""

from __future__ import annotations

import colorsys
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

FAMILIES: dict[str, tuple[str, ...]] = {
    "round": ("circle", "ellipse", "ring", "half disc"),
    "polygon": ("triangle", "square", "pentagon", "hexagon"),
    "spiky": ("star", "cross", "plus sign", "arrow"),
}
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (150, 60, 190),
    "orange": (245, 140, 30),
}
TEXTURES: tuple[str, ...] = ("solid", "striped", "dotted")
SIZES: tuple[str, ...] = ("small", "large")
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"light": (235, 235, 230), "dark": (35, 35, 45)}

SHAPES: tuple[str, ...] = tuple(shape for shapes in FAMILIES.values() for shape in shapes)
FAMILY_OF: dict[str, str] = {shape: family for family, shapes in FAMILIES.items() for shape in shapes}


@dataclass(frozen=True)
class Sample:
    """One rendered image's content: its class (shape) and attribute values."""

    shape: str
    colour: str
    texture: str
    size: str
    background: str

    def caption(self, rng: random.Random) -> str:
        """A short caption naming the class and a random subset of its attributes."""
        parts = [self.size, self.colour, self.texture] if rng.random() < 0.5 else [self.colour]
        words = " ".join(p for p in parts if rng.random() < 0.8 or p == self.colour)
        background = f" on a {self.background} background" if rng.random() < 0.5 else ""
        return f"a {words} {self.shape}, a kind of {FAMILY_OF[self.shape]} shape{background}".replace("  ", " ")


def random_sample(shape: str, rng: random.Random) -> Sample:
    """Draw random attribute values for one image of `shape`."""
    return Sample(
        shape=shape,
        colour=rng.choice(sorted(COLOURS)),
        texture=rng.choice(TEXTURES),
        size=rng.choice(SIZES),
        background=rng.choice(sorted(BACKGROUNDS)),
    )


def _outline(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]] | None:
    """Polygon vertices of `shape`, or None for the shapes drawn as ellipses."""

    def ring_points(n: int, radii: list[float], offset: float = 0.0) -> list[tuple[float, float]]:
        points = []
        for i in range(n):
            a = angle + offset + 2 * math.pi * i / n
            rr = radii[i % len(radii)]
            points.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        return points

    if shape == "triangle":
        return ring_points(3, [r])
    if shape == "square":
        return ring_points(4, [r], math.pi / 4)
    if shape == "pentagon":
        return ring_points(5, [r])
    if shape == "hexagon":
        return ring_points(6, [r])
    if shape == "star":
        return ring_points(10, [r, 0.45 * r])
    if shape in ("cross", "plus sign"):
        w = 0.33 * r
        arm = [(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w),
               (w, r), (-w, r), (-w, w), (-r, w), (-r, -w), (-w, -w)]
        rot = angle + (math.pi / 4 if shape == "cross" else 0.0)
        c, s = math.cos(rot), math.sin(rot)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in arm]
    if shape == "arrow":
        body = [(-r, -0.25 * r), (0.1 * r, -0.25 * r), (0.1 * r, -0.7 * r), (r, 0), (0.1 * r, 0.7 * r),
                (0.1 * r, 0.25 * r), (-r, 0.25 * r)]
        c, s = math.cos(angle), math.sin(angle)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in body]
    return None


def _silhouette(shape: str, size: int, cx: float, cy: float, radius: float, angle: float) -> Image.Image:
    """An L-mode mask (255 inside) of `shape` centred at (cx, cy)."""
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    points = _outline(shape, cx, cy, radius, angle)
    box = [cx - radius, cy - radius, cx + radius, cy + radius]
    if points is not None:
        draw.polygon(points, fill=255)
    elif shape == "circle":
        draw.ellipse(box, fill=255)
    elif shape == "ellipse":
        draw.ellipse([cx - radius, cy - 0.5 * radius, cx + radius, cy + 0.5 * radius], fill=255)
    elif shape == "ring":
        draw.ellipse(box, fill=255)
        inner = 0.55 * radius
        draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=0)
    elif shape == "half disc":
        draw.pieslice(box, 180, 360, fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}; valid shapes: {', '.join(SHAPES)}")
    return mask


def _pattern(texture: str, size: int) -> Image.Image:
    """An L-mode mask of the texture: 255 where the fill shows its colour, 0 where it shows the darker shade."""
    pattern = Image.new("L", (size, size), 255)
    draw = ImageDraw.Draw(pattern)
    step = max(4, size // 8)
    if texture == "striped":
        for x in range(-size, size, step):
            draw.line([(x, 0), (x + size, size)], fill=0, width=max(1, step // 3))
    elif texture == "dotted":
        d = step // 4
        for x in range(step // 2, size, step):
            for y in range(step // 2, size, step):
                draw.ellipse([x - d, y - d, x + d, y + d], fill=0)
    elif texture != "solid":
        raise ValueError(f"unknown texture {texture!r}; valid textures: {', '.join(TEXTURES)}")
    return pattern


def render(sample: Sample, rng: random.Random, image_size: int = 32, scale: int = 4) -> Image.Image:
    """Render `sample` as an RGB image (drawn at `scale`x and downsampled, for smooth edges)."""
    size = image_size * scale
    background = tuple(min(255, max(0, v + rng.randint(-12, 12))) for v in BACKGROUNDS[sample.background])
    image = Image.new("RGB", (size, size), background)
    radius = size * (0.22 if sample.size == "small" else 0.40) * rng.uniform(0.9, 1.1)
    margin = radius + 2
    cx, cy = rng.uniform(margin, size - margin), rng.uniform(margin, size - margin)
    silhouette = _silhouette(sample.shape, size, cx, cy, radius, rng.uniform(-0.3, 0.3))
    colour = COLOURS[sample.colour]
    fill = Image.composite(
        Image.new("RGB", (size, size), colour),
        Image.new("RGB", (size, size), tuple(int(v * 0.45) for v in colour)),
        _pattern(sample.texture, size),
    )
    image.paste(fill, (0, 0), silhouette)
    return image.resize((image_size, image_size), Image.Resampling.BICUBIC)


def write_coop_dataset(
    folder: Path,
    name: str,
    classes: list[str],
    counts: tuple[int, int, int] = (12, 4, 6),
    seed: int = 0,
    image_size: int = 32,
) -> Path:
    """Write a dataset in the CoOp layout: `folder/images/<class>/*.png` and `folder/split_zhou_<name>.json`.

    `counts` are the train, val and test images per class. Split entries are `[relative_path, label, classname]`,
    grouped by class in label order, paths relative to `folder` (as in CoOp's split files). Returns the split path.
    """
    rng = random.Random(seed)
    folder = Path(folder)
    split: dict[str, list[list[object]]] = {"train": [], "val": [], "test": []}
    for label, shape in enumerate(classes):
        if shape not in FAMILY_OF:
            raise ValueError(f"unknown class {shape!r}; valid classes: {', '.join(SHAPES)}")
        class_dir = folder / "images" / shape.replace(" ", "_")
        class_dir.mkdir(parents=True, exist_ok=True)
        index = 0
        for part, count in zip(("train", "val", "test"), counts, strict=True):
            for _ in range(count):
                relative = f"images/{shape.replace(' ', '_')}/{shape.replace(' ', '_')}_{index:04d}.png"
                sample = random_sample(shape, rng)
                render(sample, rng, image_size).save(folder / relative)
                split[part].append([relative, label, shape.replace(" ", "_")])
                index += 1
    path = folder / f"split_zhou_{name}.json"
    path.write_text(json.dumps(split))
    return path


SHIFTED_BACKGROUNDS: tuple[str, ...] = ("noise", "gradient", "clutter")


@dataclass(frozen=True)
class Shift:
    """How a dataset's images depart from the pre-training corpus's look (plain light or dark backgrounds, radius
    0.22 or 0.40 of the image side, exact colours, no noise): what adaptation to a new dataset has to absorb.

    `backgrounds` are drawn per image among these (noise, gradient, clutter, or the corpus's plain light and dark
    ones); `radius` is the range of the shape's radius (fraction of the image side); `colour_jitter` scales each
    channel of the shape's colour by up to ±that fraction; `pixel_noise` is the standard deviation (0-255 scale) of
    Gaussian noise added to every pixel; `hue` turns every colour (degrees), the new camera's colour cast.
    """

    backgrounds: tuple[str, ...] = SHIFTED_BACKGROUNDS
    radius: tuple[float, float] = (0.2, 0.34)
    colour_jitter: float = 0.15
    pixel_noise: float = 10.0
    background_noise: float = 40.0  # amplitude of the "noise" background's per-pixel noise
    clutter: int = 6  # distractor strokes on a "clutter" background
    hue: float = 0.0  # rotation of every colour's hue, in degrees: the new camera's colour cast


def _shifted_background(kind: str, size: int, rng: random.Random, shift: Shift) -> Image.Image:
    """A background the corpus never shows: mid-tone noise, a two-colour gradient, or a plain tone with strokes."""
    if kind in BACKGROUNDS:
        return Image.new("RGB", (size, size), tuple(min(255, max(0, v + rng.randint(-12, 12)))
                                                   for v in BACKGROUNDS[kind]))
    base = tuple(rng.randint(70, 190) for _ in range(3))
    if kind == "noise":
        noise = np.random.default_rng(rng.getrandbits(32)).uniform(
            -shift.background_noise, shift.background_noise, (size // 4, size // 4, 3))
        pixels = np.clip(np.asarray(base, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
        return Image.fromarray(pixels).resize((size, size), Image.Resampling.NEAREST)
    if kind == "gradient":
        other = np.asarray([rng.randint(40, 220) for _ in range(3)], dtype=np.float32)
        angle = rng.uniform(0, 2 * math.pi)
        ys, xs = np.mgrid[0:size, 0:size] / (size - 1) - 0.5
        t = np.clip(0.5 + xs * math.cos(angle) + ys * math.sin(angle), 0, 1)[..., None]
        pixels = (1 - t) * np.asarray(base, dtype=np.float32) + t * other
        return Image.fromarray(pixels.astype(np.uint8))
    if kind == "clutter":
        image = Image.new("RGB", (size, size), base)
        draw = ImageDraw.Draw(image)
        for _ in range(shift.clutter):
            start = (rng.uniform(0, size), rng.uniform(0, size))
            end = (start[0] + rng.uniform(-0.4, 0.4) * size, start[1] + rng.uniform(-0.4, 0.4) * size)
            tone = tuple(rng.randint(30, 230) for _ in range(3))
            draw.line([start, end], fill=tone, width=max(1, size // 40))
        return image
    raise ValueError(f"unknown shifted background {kind!r}; valid: {', '.join(SHIFTED_BACKGROUNDS)}")


def render_shifted(sample: Sample, rng: random.Random, shift: Shift, image_size: int = 48,
                   scale: int = 4) -> Image.Image:
    """Render `sample` in the shifted look of `shift`; `sample.background` names one of `shift.backgrounds`."""
    size = image_size * scale
    image = _shifted_background(sample.background, size, rng, shift)
    radius = size * rng.uniform(*shift.radius)
    margin = radius + 2
    cx, cy = rng.uniform(margin, size - margin), rng.uniform(margin, size - margin)
    silhouette = _silhouette(sample.shape, size, cx, cy, radius, rng.uniform(-0.3, 0.3))
    hue, lightness, saturation = colorsys.rgb_to_hls(*(v / 255 for v in COLOURS[sample.colour]))
    hue = (hue + shift.hue / 360) % 1.0
    colour = tuple(min(255, max(0, round(255 * v * rng.uniform(1 - shift.colour_jitter, 1 + shift.colour_jitter))))
                   for v in colorsys.hls_to_rgb(hue, lightness, saturation))
    fill = Image.composite(
        Image.new("RGB", (size, size), colour),
        Image.new("RGB", (size, size), tuple(int(v * 0.45) for v in colour)),
        _pattern(sample.texture, size),
    )
    image.paste(fill, (0, 0), silhouette)
    small = np.asarray(image.resize((image_size, image_size), Image.Resampling.BICUBIC), dtype=np.float32)
    if shift.pixel_noise > 0:
        small = small + np.random.default_rng(rng.getrandbits(32)).normal(0, shift.pixel_noise, small.shape)
    return Image.fromarray(np.clip(small, 0, 255).astype(np.uint8))
