"""Procedural world (determinism, labels read back from pixels) and the pixel-unshuffle codec."""

import random

import pytest
import torch

from embedded import codec, world
from embedded.world import (ATTRIBUTES, BACKGROUND_MAX_SATURATION, COLOUR_RGB, COLOURS, DIRECTIONS, IMAGE_SIZE,
                            NUM_FRAMES, SHAPES, SPEEDS, make_batch, make_clips)

OBJECT_SATURATION = 0.35  # background < 0.08, object colours > 0.6


def test_shapes_ranges_and_label_types():
    batch = make_batch(seed=11, start=0, count=6)
    assert batch.video.shape == (6, NUM_FRAMES, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert batch.video.dtype == torch.float32
    assert float(batch.video.min()) >= 0.0 and float(batch.video.max()) <= 1.0
    assert set(batch.labels) == set(ATTRIBUTES)
    for name, values in ATTRIBUTES.items():
        labels = batch.labels[name]
        assert labels.shape == (6,) and labels.dtype == torch.int64
        assert int(labels.min()) >= 0 and int(labels.max()) < len(values)


def test_same_seed_is_bit_identical_whatever_the_batch():
    full = make_batch(seed=5, start=0, count=10)
    again = make_batch(seed=5, start=0, count=10)
    assert torch.equal(full.video, again.video)
    picked = make_clips(5, [7, 2, 9])  # other batch size, other order
    assert torch.equal(picked.video, full.video[[7, 2, 9]])
    single = make_batch(seed=5, start=4, count=1)
    assert torch.equal(single.video[0], full.video[4])
    for name in ATTRIBUTES:
        assert torch.equal(picked.labels[name], full.labels[name][[7, 2, 9]])


def test_different_seeds_and_indices_differ():
    first = make_batch(seed=5, start=0, count=8).video
    other_seed = make_batch(seed=6, start=0, count=8).video
    other_indices = make_batch(seed=5, start=8, count=8).video
    for other in (other_seed, other_indices):
        per_clip_difference = (first - other).abs().flatten(1).amax(1)
        assert bool((per_clip_difference > 0.05).all())


def test_hash_multiplication_matches_python_integers():
    rng = random.Random(0)
    values = [rng.randrange(2**32) for _ in range(200)] + [0, 1, 2**32 - 1]
    constant = 0x846CA68B
    result = world._mul32(torch.tensor(values, dtype=torch.int64), constant)
    assert result.tolist() == [(value * constant) % 2**32 for value in values]


def _object_mask(video: torch.Tensor) -> torch.Tensor:
    return (video.amax(dim=-3) - video.amin(dim=-3)) > OBJECT_SATURATION  # (..., H, W)


def _measured_attributes(video: torch.Tensor) -> dict[str, str]:
    """Read colour, shape, direction and speed of one clip (F, 3, H, W) off its pixels."""
    mask = _object_mask(video)  # (F, H, W)
    assert bool(mask.flatten(1).any(1).all()), "every frame must show the object"
    coordinates = torch.arange(IMAGE_SIZE, dtype=torch.float32) + 0.5
    weights = mask.float()
    area = weights.sum(dim=(1, 2))
    centroid_x = (weights * coordinates[None, None, :]).sum(dim=(1, 2)) / area
    centroid_y = (weights * coordinates[None, :, None]).sum(dim=(1, 2)) / area
    dx = float(centroid_x[-1] - centroid_x[0])
    dy = float(centroid_y[-1] - centroid_y[0])
    if abs(dx) > abs(dy):
        direction = "right" if dx > 0 else "left"
    else:
        direction = "down" if dy > 0 else "up"
    travel = max(abs(dx), abs(dy))
    speed = "fast" if travel > 0.65 * (NUM_FRAMES - 1) else "slow"

    middle = video[NUM_FRAMES // 2]
    middle_mask = mask[NUM_FRAMES // 2]
    mean_colour = middle[:, middle_mask].mean(dim=1)
    prototypes = torch.tensor([COLOUR_RGB[c] for c in COLOURS])
    colour = COLOURS[int((prototypes - mean_colour).norm(dim=1).argmin())]

    rows = torch.nonzero(middle_mask.any(1)).flatten()
    cols = torch.nonzero(middle_mask.any(0)).flatten()
    box = float((rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1))
    fill = float(middle_mask.sum()) / box  # circle ~0.79, square ~1, triangle ~0.5
    shape = "square" if fill > 0.9 else "circle" if fill > 0.64 else "triangle"
    return {"colour": colour, "shape": shape, "direction": direction, "speed": speed}


def test_labels_agree_with_what_is_rendered():
    batch = make_batch(seed=2024, start=0, count=64)
    for clip in range(64):
        measured = _measured_attributes(batch.video[clip])
        expected = {name: ATTRIBUTES[name][int(batch.labels[name][clip])] for name in ATTRIBUTES}
        assert measured == expected, f"clip {clip}"
        assert measured["speed"] in SPEEDS and measured["direction"] in DIRECTIONS and measured["shape"] in SHAPES


def test_every_class_appears_with_roughly_uniform_frequency():
    labels = world.sample_parameters(3, torch.arange(4000))[0]
    for name, values in ATTRIBUTES.items():
        counts = torch.bincount(labels[name], minlength=len(values)).float()
        expected = 4000 / len(values)
        assert bool(((counts - expected).abs() < 0.15 * expected).all()), (name, counts.tolist())


def test_backgrounds_are_never_saturated_and_object_stays_inside():
    indices = torch.arange(256)
    labels, params = world.sample_parameters(9, indices)
    background = world.render_background(params)
    saturation = background.amax(dim=1) - background.amin(dim=1)
    assert float(saturation.max()) < BACKGROUND_MAX_SATURATION
    video = world.render(labels, params)
    mask = _object_mask(video)
    border = torch.zeros(IMAGE_SIZE, IMAGE_SIZE, dtype=torch.bool)
    border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
    assert not bool((mask & border).any()), "the object must never touch the image border"


def test_invalid_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="seed"):
        make_batch(seed=-1, start=0, count=2)
    with pytest.raises(ValueError, match="count"):
        make_batch(seed=0, start=0, count=0)
    with pytest.raises(ValueError, match="2\\*\\*31"):
        make_clips(0, [2**31])
    assert world.parse_attribute_value("Color = Blue") == ("colour", COLOURS.index("blue"))
    with pytest.raises(ValueError, match="circle, square, triangle"):
        world.parse_attribute_value("shape=hexagon")
    with pytest.raises(ValueError, match="name=value"):
        world.parse_attribute_value("red")


def test_codec_is_exactly_invertible_and_keeps_frame_layout():
    video = make_batch(seed=1, start=0, count=3).video
    latent = codec.encode(video)
    assert latent.shape == (3 * NUM_FRAMES,) + codec.LATENT_SHAPE
    assert float((codec.decode(latent) - video).abs().max()) < 1e-6
    # Frames are stacked clip by clip: latent row b*F + f is frame f of clip b.
    assert torch.equal(latent[NUM_FRAMES + 5], codec.encode(video[1:2, 5:6])[0])
    random_latent = torch.randn(2 * NUM_FRAMES, *codec.LATENT_SHAPE)
    assert float((codec.encode(codec.decode(random_latent)) - random_latent).abs().max()) < 1e-5
    assert codec.decode(random_latent).shape == (2, NUM_FRAMES, 3, IMAGE_SIZE, IMAGE_SIZE)


def test_codec_latents_have_the_documented_scale():
    latent = codec.encode(make_batch(seed=77, start=0, count=64).video)
    assert abs(float(latent.mean())) < 0.2 * codec.LATENT_STD
    assert 0.8 * codec.LATENT_STD < float(latent.std()) < 1.25 * codec.LATENT_STD


def test_codec_rejects_wrong_shapes():
    with pytest.raises(ValueError, match="encode expects"):
        codec.encode(torch.zeros(1, NUM_FRAMES, 3, 64, 64))
    with pytest.raises(ValueError, match="multiple of num_frames"):
        codec.decode(torch.zeros(NUM_FRAMES + 1, *codec.LATENT_SHAPE))
    with pytest.raises(ValueError, match="decode expects"):
        codec.decode(torch.zeros(NUM_FRAMES, 4, 16, 16))
