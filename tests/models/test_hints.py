"""Colour hints: a request's points checked against the photograph, drawn into the model's grid,
and simulated from the true colours for training (models/hints.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models.color import AB_SCALE
from models.hints import MAX_HINTS, BadHint, Hint, hint_ab, parse_hints, rasterize, simulate_hints


def test_hints_are_read_from_json_text_or_a_list():
    points = [{"x": 120, "y": 80, "color": "#aa3311", "radius": 3}, {"x": 0, "y": 0.5, "color": "0f0"}]
    expected = [Hint(120.0, 80.0, (0xAA, 0x33, 0x11), 3.0), Hint(0.0, 0.5, (0, 0xFF, 0), 0.0)]
    assert parse_hints(points, 200, 100) == expected
    assert parse_hints(json.dumps(points), 200, 100) == expected
    assert parse_hints("[]", 200, 100) == []


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ("not json", "JSON list"),
        ("[" * 100_000, "nested this deep"),
        ({"x": 1}, "JSON list"),
        ([{"x": 1, "y": 1, "color": "#fff"}] * (MAX_HINTS + 1), f"at most {MAX_HINTS}"),
        (["#fff"], "hint 0: must be an object"),
        ([{"x": 1, "y": 1}], "hint 0: needs x, y and color"),
        ([{"x": 1, "y": 1, "color": "#fff", "size": 2}], "unknown field"),
        (
            [{"x": 1, "y": 1, "color": "#fff"}, {"x": 200, "y": 1, "color": "#fff"}],
            "hint 1: (200, 1) is outside",
        ),
        ([{"x": -1, "y": 1, "color": "#fff"}], "outside the 200x100"),
        ([{"x": 1, "y": 100, "color": "#fff"}], "outside"),
        ([{"x": "1", "y": 1, "color": "#fff"}], "x must be a number"),
        ([{"x": True, "y": 1, "color": "#fff"}], "x must be a number"),
        ([{"x": float("nan"), "y": 1, "color": "#fff"}], "x must be a number"),
        ([{"x": 10**400, "y": 1, "color": "#fff"}], "x must be a number"),  # no float holds it
        ([{"x": 1, "y": 1, "color": "red"}], "color must be an sRGB colour"),
        ([{"x": 1, "y": 1, "color": "#12345g"}], "color must be"),
        ([{"x": 1, "y": 1, "color": "#fff", "radius": -1}], "radius must be from 0"),
        ([{"x": 1, "y": 1, "color": "#fff", "radius": 10_000}], "radius must be from 0"),
    ],
)
def test_a_bad_hint_is_refused_with_its_index_and_the_reason(data, words):
    with pytest.raises(BadHint, match=None) as caught:
        parse_hints(data, 200, 100)
    assert words in str(caught.value)


def test_a_hints_colour_becomes_its_lab_a_and_b():
    ab = hint_ab([Hint(0, 0, (128, 128, 128)), Hint(0, 0, (255, 0, 0))])
    np.testing.assert_allclose(ab[0], [0, 0], atol=0.05)  # gray has no chroma
    np.testing.assert_allclose(ab[1], [80.09, 67.20], atol=0.3)  # sRGB red in CIE Lab (D65)


def test_no_hints_is_an_all_zero_grid():
    grid = rasterize([], 200, 100, 32)
    assert grid.shape == (32, 32, 3) and grid.dtype == np.float32 and not grid.any()


def test_a_point_lands_on_the_grid_cell_of_its_place_in_the_squeezed_photograph():
    red = (255, 0, 0)
    grid = rasterize([Hint(150, 20, red)], 200, 100, 32)
    (row, col), count = np.argwhere(grid[..., 2] == 1)[0], int(grid[..., 2].sum())
    assert count == 1 and (row, col) == (int(20.5 * 32 / 100), int(150.5 * 32 / 200))
    np.testing.assert_allclose(grid[row, col, :2] * AB_SCALE, hint_ab([Hint(0, 0, red)])[0], atol=1e-4)
    assert not grid[..., :2][grid[..., 2] == 0].any()  # no colour outside the mask


def test_a_radius_covers_an_ellipse_when_the_photograph_is_squeezed():
    grid = rasterize([Hint(100, 50, (0, 0, 255), radius=50)], 200, 100, 32)
    mask = grid[..., 2] == 1
    rows, cols = np.nonzero(mask)
    assert cols.max() - cols.min() + 1 == pytest.approx(16, abs=1)  # 50 px of 200 -> 8 cells each way
    assert rows.max() - rows.min() + 1 == pytest.approx(32, abs=1)  # 50 px of 100 -> 16 cells each way
    assert mask.sum() == pytest.approx(np.pi * 8 * 16, rel=0.1)


def test_a_later_hint_wins_where_two_overlap():
    grid = rasterize([Hint(10, 10, (255, 0, 0), 5), Hint(10, 10, (0, 0, 255), 0)], 20, 20, 20)
    blue = hint_ab([Hint(0, 0, (0, 0, 255))])[0] / AB_SCALE
    np.testing.assert_allclose(grid[10, 10, :2], blue, atol=1e-6)


def test_simulated_hints_are_often_none_and_carry_the_true_patch_colour():
    rng = np.random.default_rng(0)
    ab = np.stack(np.meshgrid(np.linspace(-0.5, 0.5, 64), np.linspace(0.3, -0.3, 64)), axis=-1).astype(
        np.float32
    )
    grids = [simulate_hints(ab, rng) for _ in range(800)]
    empty = sum(not g.any() for g in grids) / len(grids)
    assert 0.08 < empty < 0.17  # the paper's geometric count: 1 in 8 without hints
    hinted = np.concatenate([g[g[..., 2] == 1] for g in grids])
    assert len(hinted) > 0 and np.all(np.abs(hinted[:, :2]) <= 0.5)
    # a hinted cell's colour is its patch's mean: close to the true colour there
    grid = next(g for g in grids if g[..., 2].sum() == 1)
    (row, col) = np.argwhere(grid[..., 2] == 1)[0]
    np.testing.assert_allclose(grid[row, col, :2], ab[row, col], atol=1e-6)
    for g in grids:
        assert not g[..., :2][g[..., 2] == 0].any()
