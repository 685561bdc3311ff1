import numpy as np

from sospcheck.zero_output import _g, _group_lines, zero_output_test


def test_lines_group_both_orientations_and_sum_unsigned_weights():
    U = np.array([[1.0, 0.0], [-1.0, 0.0], [0.6, 0.8], [1.0, 0.0], [-0.6, -0.8]])
    W = np.array([[1.0], [2.0], [3.0], [4.0], [5.0]])
    lines, R = _group_lines(U, W)
    assert len(lines) == 2
    np.testing.assert_allclose(np.abs(lines[0]), [1.0, 0.0])
    np.testing.assert_allclose(R[0], [7.0])  # relu(-c t) = c (relu(t) - t): the ramp weight is |lambda| r
    np.testing.assert_allclose(R[1], [8.0])


def test_antisymmetric_residuals_on_three_lines_make_g_identically_zero():
    # r_{-x} = -r_x makes each line's ramp cancel, leaving c_l a_l . nu; sum_l c_l a_l = 0 here
    A = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    c = np.array([1.0, 1.0, -1.0])
    Xr = np.concatenate([A, -A])
    r = np.concatenate([c, -c])[:, None]
    rng = np.random.default_rng(0)
    res = zero_output_test(0, Xr, r, np.zeros(6), np.ones(6, bool), 1.0, 0.0, 1e-12, rng)
    assert res.flat and res.n_lines == 3
    r_bad = r.copy()
    r_bad[5] = 0.5  # breaks the cancellation on the third line
    res = zero_output_test(0, Xr, r_bad, np.zeros(6), np.ones(6, bool), 1.0, 0.0, 1e-12, rng)
    assert not res.flat and np.linalg.norm(res.g_nu) > 0


def test_a_nonzero_ramp_gives_a_probe_with_g_nonzero():
    Xr = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    r = np.array([[1.0], [0.0], [0.0]])
    rng = np.random.default_rng(0)
    res = zero_output_test(0, Xr, r, np.zeros(3), np.ones(3, bool), 1.0, 0.0, 1e-12, rng)
    assert not res.flat and res.nu is not None
    g = _g(res.nu, Xr, r, np.zeros(3), np.ones(3, bool), 1.0, 0.0)
    assert np.linalg.norm(g) > 0.1 * np.linalg.norm(res.nu)


def test_ten_thousand_points_on_the_kink_are_grouped_in_one_pass_each():
    # every point of a zero neuron is on its kink; the grouping used to be a Python double loop
    rng = np.random.default_rng(1)
    Xr = rng.standard_normal((10000, 11))
    r = rng.standard_normal((10000, 1))
    res = zero_output_test(0, Xr, r, np.zeros(10000), np.ones(10000, bool), 1.0, 0.0, 1e-9, rng)
    assert not res.flat and res.n_lines == 10000
