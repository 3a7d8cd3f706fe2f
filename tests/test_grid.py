import math

import numpy as np
import pytest

from gjp import grid


def test_known_tile_bounds():
    # 16_18052_25957 is in Charlotte, NC; bounds from the slippy-map formulas
    west, south, east, north = grid.tile_bounds(18052, 25957, 16)
    assert west == pytest.approx(-80.83740234375, abs=1e-12)
    assert east == pytest.approx(-80.8319091796875, abs=1e-12)
    assert south == pytest.approx(35.00300339527671, abs=1e-11)
    assert north == pytest.approx(35.007502842952896, abs=1e-11)


def test_lonlat_to_tile_and_back():
    x, y = grid.tile_of(-80.835, 35.005, 16)
    assert (int(x), int(y)) == (18052, 25957)
    lon, lat = grid.fractional_to_lonlat(*grid.lonlat_to_fractional(-80.835, 35.005, 16), 16)
    assert float(lon) == pytest.approx(-80.835, abs=1e-12)
    assert float(lat) == pytest.approx(35.005, abs=1e-12)


def test_y_counts_from_the_north():
    _, y_north = grid.tile_of(0.0, 60.0, 16)
    _, y_south = grid.tile_of(0.0, -60.0, 16)
    assert y_north < 2**15 < y_south


def test_points_on_borders_go_east_and_south():
    west, south, east, north = grid.tile_bounds(18052, 25957, 16)
    x, y = grid.tile_of(west, north, 16)  # the NW corner belongs to this tile
    assert (int(x), int(y)) == (18052, 25957)
    x, y = grid.tile_of(east, south, 16)  # the SE corner belongs to the next tile both ways
    assert (int(x), int(y)) == (18053, 25958)


def test_group_membership():
    assert grid.group_name(16, 18052, 25957) == "14_4513_6489"
    members = grid.group_members(16, 4513, 6489)
    assert len(members) == 16 and "16_18052_25957" in members
    assert members[0] == "16_18052_25956" and members[-1] == "16_18055_25959"
    gx, gy = grid.group_of(np.array([18052, 18055, 18056]), np.array([25956, 25959, 25960]))
    assert gx.tolist() == [4513, 4513, 4514] and gy.tolist() == [6489, 6489, 6490]


def test_tile_width_is_not_300_m():
    equator = grid.tile_width_m(2**15 - 1, 16)  # the row just north of the equator
    assert float(equator) == pytest.approx(611.5, abs=0.1)
    _, y = grid.tile_of(0.0, 37.7, 16)  # San Francisco's latitude
    assert 480 < float(grid.tile_width_m(y, 16)) < 490
    _, y = grid.tile_of(0.0, 60.0, 16)
    assert float(grid.tile_width_m(y, 16)) == pytest.approx(611.5 * math.cos(math.radians(60)), rel=2e-3)


@pytest.mark.parametrize("bad", ["16_18052", "a_b_c", "16_70000_1", "16_-1_5"])
def test_bad_tile_names(bad):
    with pytest.raises(ValueError):
        grid.parse_tile_name(bad)
