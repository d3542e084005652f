"""terrain.terrace through pipehost.testing: in-process, on sealed memfds."""

import numpy as np

from pipehost.testing import run

from terrace import terrace


def test_land_is_cut_into_terraces_and_the_sea_is_left_alone():
    h = np.linspace(-500.0, 999.0, 64 * 32, dtype=np.float32).reshape(32, 64)
    with run(terrace, inputs={"elevation": h}, params={"step": 250.0, "sharpness": 1.0},
             topology="sphere") as r:
        out = r.check().outputs["terraced"]
        sea = h <= 0
        assert np.array_equal(out[sea], h[sea])
        # Sharpness 1: every land cell lies within a terrace's step, never above
        # the input, and the treads sit on multiples of the step.
        land = ~sea
        assert (out[land] <= h[land] + 1e-3).all()
        assert (np.floor(out[land] / 250.0) == np.floor(h[land] / 250.0)).all()
        assert r.metrics["terraces"] == 4  # treads from 0, 250, 500 and 750 m
        assert r.span("terrace").parent_id == 0


def test_sharpness_zero_leaves_the_slope():
    h = np.linspace(1.0, 900.0, 16 * 8, dtype=np.float32).reshape(8, 16)
    out = run(terrace, inputs={"elevation": h}, params={"sharpness": 0.0}).check().outputs["terraced"]
    assert np.allclose(out, h, rtol=1e-6)


def test_bad_params_name_themselves():
    h = np.zeros((8, 16), np.float32)
    assert 'param "step"' in run(terrace, inputs={"elevation": h}, params={"step": 0.0}).error.message
    assert 'param "sharpness"' in run(terrace, inputs={"elevation": h}, params={"sharpness": 1.5}).error.message
