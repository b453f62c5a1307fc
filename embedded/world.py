"""Procedural "synthetic world" of short videos: one coloured shape moving over a dim background.

Every clip is a pure function of ``(seed, index)``: its parameters come from a counter-based
integer hash (no stateful RNG), so labels and random draws are identical whatever batch the clip
is rendered in and on whatever device.  Rendering uses only element-wise float operations
(+, -, *, /, sqrt, min/max, clamp, comparisons), so pixels are bit-identical across batch sizes on
one device; CPU and CUDA pixels agree to 4.2e-7 (measured by the training script on an H100;
some CUDA kernels round differently, the cause was not isolated).

Attribute vocabulary (label ``k`` of attribute ``a`` means ``ATTRIBUTES[a][k]``):

* ``colour``    -- ``COLOURS``    = red, green, blue, yellow (saturated, bright)
* ``shape``     -- ``SHAPES``     = circle, square, triangle (equal area, triangle points up)
* ``direction`` -- ``DIRECTIONS`` = left, right, up, down ("up" = towards row 0)
* ``speed``     -- ``SPEEDS``     = slow (0.30-0.45 px/frame), fast (0.85-1.00 px/frame)

Backgrounds are a grey level plus a faint tint, a linear gradient and three soft bumps; their
saturation (max minus min channel) stays below ``BACKGROUND_MAX_SATURATION`` so that no
background pixel ever looks like an object colour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

NUM_FRAMES = 16
IMAGE_SIZE = 32
NUM_CHANNELS = 3

COLOURS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = ("left", "right", "up", "down")
SPEEDS = ("slow", "fast")
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "colour": COLOURS,
    "shape": SHAPES,
    "direction": DIRECTIONS,
    "speed": SPEEDS,
}
ATTRIBUTE_NAMES = tuple(ATTRIBUTES)

# Nominal RGB of each colour; each clip jitters every channel by up to +-COLOUR_JITTER.
COLOUR_RGB = {
    "red": (0.90, 0.15, 0.12),
    "green": (0.15, 0.80, 0.20),
    "blue": (0.15, 0.30, 0.95),
    "yellow": (0.95, 0.85, 0.10),
}
COLOUR_JITTER = 0.05
# Unit displacement per frame for each direction, in (x, y) pixel coordinates (y grows downwards).
DIRECTION_VECTORS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
# Pixels per frame: (min, max) of the uniform draw for each speed class.
SPEED_RANGES = {"slow": (0.30, 0.45), "fast": (0.85, 1.00)}
# "Size" is the radius of the circle of equal area; every shape has the area pi * size**2.
SIZE_RANGE = (3.5, 4.75)
SQUARE_HALF_SIDE = math.sqrt(math.pi) / 2.0  # half side of the equal-area square, per unit size
TRIANGLE_CIRCUMRADIUS = math.sqrt(4.0 * math.pi / (3.0 * math.sqrt(3.0)))  # per unit size
EDGE_MARGIN = 1.0  # pixels kept between the object's bounding box and the image border
BACKGROUND_MAX_SATURATION = 0.08
NUM_BUMPS = 3

_HASH_MASK = 0xFFFFFFFF
_NUM_SLOTS = 32  # uniforms drawn per clip (slots 0..28 used, the rest reserved)
_MAX_KEY = 2**31  # seed and index must be in [0, 2**31)


@dataclass(frozen=True)
class ClipBatch:
    """Rendered clips with their labels."""

    video: torch.Tensor  # (B, NUM_FRAMES, 3, IMAGE_SIZE, IMAGE_SIZE), float32 in [0, 1]
    labels: dict[str, torch.Tensor]  # attribute name -> (B,) int64 class index
    params: dict[str, torch.Tensor]  # continuous parameters (B,) or (B, k) float32


def _mul32(a: torch.Tensor, constant: int) -> torch.Tensor:
    """(a * constant) mod 2**32 for int64 tensors holding values in [0, 2**32), without overflow."""
    low = a & 0xFFFF
    high = a >> 16
    return (low * constant + (((high * constant) & 0xFFFF) << 16)) & _HASH_MASK


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mixer ("lowbias32") on int64 tensors with values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _check_key(name: str, value: int) -> None:
    if not 0 <= value < _MAX_KEY:
        raise ValueError(f"{name} must be an integer in [0, 2**31), got {value}")


def clip_uniforms(seed: int, indices: torch.Tensor) -> torch.Tensor:
    """Uniform floats in [0, 1) of shape (B, 32) that depend only on (seed, index) for each clip."""
    _check_key("seed", int(seed))
    if indices.dtype != torch.int64 or indices.ndim != 1:
        raise ValueError(f"indices must be a 1-D int64 tensor, got {indices.dtype} of shape {tuple(indices.shape)}")
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= _MAX_KEY):
        raise ValueError("clip indices must lie in [0, 2**31)")
    seed_key = _hash32(torch.tensor(int(seed) ^ 0x5BD1E995, dtype=torch.int64, device=indices.device))
    clip_key = _hash32(seed_key ^ indices)
    slots = torch.arange(_NUM_SLOTS, dtype=torch.int64, device=indices.device)
    bits = _hash32(_hash32(clip_key[:, None] ^ (slots * 0x9E3779B1 & _HASH_MASK)[None, :]) ^ clip_key[:, None])
    # 24 bits convert to float32 exactly, so every device gets identical uniforms.
    return (bits >> 8).to(torch.float32) / float(2**24)


def _uniform(u: torch.Tensor, low: float, high: float) -> torch.Tensor:
    return low + u * (high - low)


def _pick(u: torch.Tensor, count: int) -> torch.Tensor:
    return torch.clamp(torch.floor(u * count), max=count - 1).to(torch.int64)


def _shape_extents(shape: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Distances from the shape centre to its bounding box: (B, 4) = (left, right, up, down)."""
    circle = torch.stack([size, size, size, size], dim=1)
    half = size * SQUARE_HALF_SIDE
    square = torch.stack([half, half, half, half], dim=1)
    radius = size * TRIANGLE_CIRCUMRADIUS
    half_width = radius * (math.sqrt(3.0) / 2.0)
    triangle = torch.stack([half_width, half_width, radius, radius * 0.5], dim=1)
    shape = shape[:, None]
    return torch.where(shape == 0, circle, torch.where(shape == 1, square, triangle))


def sample_parameters(seed: int, indices: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Labels and continuous rendering parameters of the clips ``indices`` of world ``seed``."""
    u = clip_uniforms(seed, indices)
    labels = {
        "colour": _pick(u[:, 0], len(COLOURS)),
        "shape": _pick(u[:, 1], len(SHAPES)),
        "direction": _pick(u[:, 2], len(DIRECTIONS)),
        "speed": _pick(u[:, 3], len(SPEEDS)),
    }
    device = indices.device
    size = _uniform(u[:, 4], *SIZE_RANGE)
    slow_lo, slow_hi = SPEED_RANGES["slow"]
    fast_lo, fast_hi = SPEED_RANGES["fast"]
    speed = torch.where(labels["speed"] == 0, _uniform(u[:, 5], slow_lo, slow_hi), _uniform(u[:, 5], fast_lo, fast_hi))
    direction_table = torch.tensor([DIRECTION_VECTORS[d] for d in DIRECTIONS], dtype=torch.float32, device=device)
    unit = direction_table[labels["direction"]]  # (B, 2)
    velocity = unit * speed[:, None]
    travel = speed * float(NUM_FRAMES - 1)

    extents = _shape_extents(labels["shape"], size)  # left, right, up, down
    # Start position: the whole path, bounding box included, stays EDGE_MARGIN inside the image.
    low_x = extents[:, 0] + EDGE_MARGIN
    high_x = float(IMAGE_SIZE) - extents[:, 1] - EDGE_MARGIN
    low_y = extents[:, 2] + EDGE_MARGIN
    high_y = float(IMAGE_SIZE) - extents[:, 3] - EDGE_MARGIN
    along_x = unit[:, 0] != 0
    moving_low = torch.where(along_x, low_x, low_y) + torch.clamp(-torch.where(along_x, unit[:, 0], unit[:, 1]), min=0.0) * travel
    moving_high = torch.where(along_x, high_x, high_y) - torch.clamp(torch.where(along_x, unit[:, 0], unit[:, 1]), min=0.0) * travel
    moving_start = _uniform(u[:, 6], 0.0, 1.0) * (moving_high - moving_low) + moving_low
    cross_start = torch.where(along_x, _uniform(u[:, 7], 0.0, 1.0) * (high_y - low_y) + low_y,
                              _uniform(u[:, 7], 0.0, 1.0) * (high_x - low_x) + low_x)
    start = torch.stack([torch.where(along_x, moving_start, cross_start),
                         torch.where(along_x, cross_start, moving_start)], dim=1)

    colour_table = torch.tensor([COLOUR_RGB[c] for c in COLOURS], dtype=torch.float32, device=device)
    colour = torch.clamp(colour_table[labels["colour"]] + (u[:, 8:11] * 2.0 - 1.0) * COLOUR_JITTER, 0.0, 1.0)

    grey = _uniform(u[:, 11], 0.12, 0.50)
    tint = (u[:, 12:15] * 2.0 - 1.0) * (BACKGROUND_MAX_SATURATION * 0.45)
    gradient = (u[:, 15:17] * 2.0 - 1.0) * 0.12  # change of grey level from the centre to an edge
    bumps = u[:, 17:29].reshape(-1, NUM_BUMPS, 4)
    bump_centre = bumps[..., 0:2] * float(IMAGE_SIZE)
    bump_radius = _uniform(bumps[..., 2], 6.0, 16.0)
    bump_amplitude = (bumps[..., 3] * 2.0 - 1.0) * 0.08
    params = {
        "size": size, "speed": speed, "velocity": velocity, "start": start, "colour": colour,
        "grey": grey, "tint": tint, "gradient": gradient, "bump_centre": bump_centre,
        "bump_radius": bump_radius, "bump_amplitude": bump_amplitude,
    }
    return labels, params


def _pixel_grid(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    coords = torch.arange(IMAGE_SIZE, dtype=torch.float32, device=device) + 0.5
    return coords[None, None, :], coords[None, :, None]  # x (1,1,W), y (1,H,1)


def render_background(params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Static backgrounds (B, 3, H, W): grey + tint + linear gradient + soft bumps."""
    x, y = _pixel_grid(params["grey"].device)
    half = IMAGE_SIZE / 2.0
    grey = params["grey"][:, None, None]
    level = grey + params["gradient"][:, 0, None, None] * ((x - half) / half) \
        + params["gradient"][:, 1, None, None] * ((y - half) / half)
    for bump in range(NUM_BUMPS):
        dx = x - params["bump_centre"][:, bump, 0, None, None]
        dy = y - params["bump_centre"][:, bump, 1, None, None]
        radius = params["bump_radius"][:, bump, None, None]
        falloff = torch.clamp(1.0 - (dx * dx + dy * dy) / (radius * radius), min=0.0)
        level = level + params["bump_amplitude"][:, bump, None, None] * (falloff * falloff)
    background = level[:, None] + params["tint"][:, :, None, None]
    return torch.clamp(background, 0.02, 0.98)


def _signed_distance(shape: torch.Tensor, size: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """Approximate signed distance in pixels (negative inside) of each shape, for antialiasing."""
    size = size[:, None, None, None]
    circle = torch.sqrt(dx * dx + dy * dy) - size
    square = torch.maximum(torch.abs(dx), torch.abs(dy)) - size * SQUARE_HALF_SIDE
    # Upward-pointing equilateral triangle: three half-planes at the inradius (half the circumradius).
    s = math.sqrt(3.0) / 2.0
    inradius = size * (TRIANGLE_CIRCUMRADIUS / 2.0)
    edges = torch.maximum(torch.maximum(dy, dx * s - dy * 0.5), -dx * s - dy * 0.5)
    triangle = edges - inradius
    shape = shape[:, None, None, None]
    return torch.where(shape == 0, circle, torch.where(shape == 1, square, triangle))


def render(labels: dict[str, torch.Tensor], params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Render clips (B, NUM_FRAMES, 3, H, W) in [0, 1] from labels and parameters."""
    device = params["size"].device
    x, y = _pixel_grid(device)
    frames = torch.arange(NUM_FRAMES, dtype=torch.float32, device=device)
    centre = params["start"][:, None, :] + frames[None, :, None] * params["velocity"][:, None, :]  # (B,F,2)
    dx = x[None] - centre[:, :, 0, None, None]  # (B, F, 1, W)
    dy = y[None] - centre[:, :, 1, None, None]  # (B, F, H, 1)
    dx, dy = torch.broadcast_tensors(dx, dy)  # (B, F, H, W)
    distance = _signed_distance(labels["shape"], params["size"], dx, dy)
    coverage = torch.clamp(0.5 - distance, 0.0, 1.0)[:, :, None]  # (B, F, 1, H, W)
    background = render_background(params)[:, None]  # (B, 1, 3, H, W)
    colour = params["colour"][:, None, :, None, None]  # (B, 1, 3, 1, 1)
    return background * (1.0 - coverage) + colour * coverage


def make_clips(seed: int, indices: torch.Tensor | range | list[int], device: torch.device | str = "cpu") -> ClipBatch:
    """Render clips ``indices`` of world ``seed`` on ``device``; same clip for the same (seed, index)."""
    if not isinstance(indices, torch.Tensor):
        indices = torch.tensor(list(indices), dtype=torch.int64)
    indices = indices.to(device=device, dtype=torch.int64)
    labels, params = sample_parameters(seed, indices)
    return ClipBatch(video=render(labels, params), labels=labels, params=params)


def make_batch(seed: int, start: int, count: int, device: torch.device | str = "cpu") -> ClipBatch:
    """Render the ``count`` consecutive clips ``start .. start+count-1`` of world ``seed``."""
    if count <= 0:
        raise ValueError(f"count must be positive, got {count}")
    _check_key("start", start)
    _check_key("start + count - 1", start + count - 1)
    return make_clips(seed, torch.arange(start, start + count, dtype=torch.int64, device=device), device)


def parse_attribute_value(text: str) -> tuple[str, int]:
    """Parse ``"colour=red"`` into ``("colour", 0)``; raises ValueError naming the valid choices."""
    if "=" not in text:
        raise ValueError(f"attribute target {text!r} must look like 'name=value', e.g. 'colour=red'; "
                         f"names: {', '.join(ATTRIBUTE_NAMES)}")
    name, value = (part.strip().lower() for part in text.split("=", 1))
    if name == "color":
        name = "colour"
    if name not in ATTRIBUTES:
        raise ValueError(f"unknown attribute {name!r} in {text!r}; choose one of {', '.join(ATTRIBUTE_NAMES)}")
    if value not in ATTRIBUTES[name]:
        raise ValueError(f"unknown {name} {value!r} in {text!r}; choose one of {', '.join(ATTRIBUTES[name])}")
    return name, ATTRIBUTES[name].index(value)
