"""The shapes world: pixels, captions, labels and the held-out split."""

import numpy as np
import pytest

from easel.data import shapes


def spec(shape="square", color="red", background="blue", radius=18.0, center=(32.0, 32.0)):
    return shapes.ShapeSpec(shape, color, background, radius, center)


@pytest.mark.parametrize("shape", shapes.SHAPES)
def test_shape_is_drawn_in_its_colour_on_its_background(shape):
    pixels = np.asarray(shapes.render(spec(shape=shape, color="yellow", background="purple")))
    assert pixels.shape == (64, 64, 3)
    assert tuple(pixels[1, 1]) == shapes.COLORS["purple"]  # corner: background
    # every shape covers the point a little above its centre (the heart's notch is higher)
    assert tuple(pixels[30, 32]) == shapes.COLORS["yellow"]


def test_shapes_differ_from_each_other():
    masks = [np.asarray(shapes.render(spec(shape=s)))[..., 2] < 128 for s in shapes.SHAPES]
    for i in range(len(masks)):
        for j in range(i + 1, len(masks)):
            assert (masks[i] != masks[j]).mean() > 0.03, (shapes.SHAPES[i], shapes.SHAPES[j])


def test_world_has_enough_shapes_and_named_colours():
    assert {"circle", "square", "triangle", "star", "heart", "cross"} <= set(shapes.SHAPES)
    assert len(shapes.COLORS) >= 8


def test_sampling_is_deterministic_and_varied():
    a, b = shapes.sample_specs(50, seed=3), shapes.sample_specs(50, seed=3)
    assert a == b
    assert np.array_equal(shapes.render_array(a[:5]), shapes.render_array(b[:5]))
    assert len({s.radius for s in a}) == 50 and len({s.center for s in a}) == 50
    assert shapes.sample_specs(5, seed=4) != a[:5]


def test_held_out_pairs_never_appear_in_training_split():
    train = shapes.sample_specs(3000, seed=0, split="train")
    assert not {(s.shape, s.color) for s in train} & shapes.HELD_OUT
    # ... but every shape and every colour does
    assert {s.shape for s in train} == set(shapes.SHAPES)
    assert {s.color for s in train} == set(shapes.COLOR_NAMES)
    held_out = shapes.sample_specs(200, seed=0, split="held_out")
    assert {(s.shape, s.color) for s in held_out} == set(shapes.HELD_OUT)


def test_background_always_differs_from_shape_colour():
    assert all(s.color != s.background for s in shapes.sample_specs(500, seed=1, split="all"))


def test_caption_and_labels():
    s = spec(shape="star", color="red", background="blue")
    assert shapes.caption(s) == "a red star on a blue background"
    assert shapes.labels(s) == (
        shapes.SHAPES.index("star"),
        shapes.COLOR_NAMES.index("red"),
        shapes.COLOR_NAMES.index("blue"),
    )
    assert shapes.prompt_for("star", None, "blue") == "a star on a blue background"
    assert shapes.prompt_for(None, "red", None) == "a red shape"
    assert set(shapes.caption(s).split()) <= set(shapes.vocabulary())
