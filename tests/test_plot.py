"""`sospcheck plot` / `check --plot`: the pictures, the exact loss they draw, and the docs images script."""

import runpy
import sys
from pathlib import Path

import numpy as np
import pytest

from sospcheck import Direction, TwoLayerNet, check
from sospcheck.cli import main
from sospcheck.demo import EXAMPLES
from sospcheck.losses import risk

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _mpl():
    pytest.importorskip("matplotlib")


def _example_file(tmp_path, ex, name="ex.npz"):
    path = tmp_path / name
    np.savez(path, W1=ex.net.W1, b1=ex.net.b1, W2=ex.net.W2, b2=ex.net.b2, X=ex.X, Y=ex.Y)
    return str(path)


@pytest.mark.parametrize("lam,b1,b2", [(0.0, True, True), (0.3, False, True), (0.0, True, False)])
def test_slice_is_the_true_risk(lam, b1, b2):
    from sospcheck.plot import Slice, random_direction

    rng = np.random.default_rng(1)
    net = TwoLayerNet(rng.standard_normal((4, 3)), rng.standard_normal(4) if b1 else None,
                      rng.standard_normal((2, 4)), rng.standard_normal(2) if b2 else None, s_minus=0.1)
    X, Y = rng.standard_normal((11, 3)), rng.standard_normal((11, 2))
    r = check(net, X, Y, weight_decay=lam, fragility=False)
    st = r.problem(X, Y)
    e1 = random_direction(net, rng)
    e2 = random_direction(net, rng, [e1])
    assert abs(e1.vector() @ e2.vector()) < 1e-12 and abs(e2.norm() - 1) < 1e-12
    sl = Slice(st, [e1, e2])
    for a, b in [(0.0, 0.0), (0.3, -0.7), (-1.1, 0.2)]:
        moved = net.perturbed(Direction(*(None if x is None else a * x + b * y for x, y in zip(
            (e1.W1, e1.b1, e1.W2, e1.b2), (e2.W1, e2.b1, e2.W2, e2.b2)))))
        assert sl(a, b) == pytest.approx(risk(moved, st.X, st.Y, st.loss, st.weight, st.weight_decay), rel=1e-12)


def test_descent_figure_draws_the_certificate():
    from sospcheck.plot import figure

    ex = EXAMPLES[2]
    r = check(ex.net, ex.X, ex.Y)
    calls = []
    fig = figure(r, r.problem(ex.X, ex.Y), grid=9, progress=lambda *a: calls.append(a))
    line, slice_, bars = fig.axes[:3]  # fig.axes[3] is the slice's colorbar
    d = r.descent
    assert "returned direction (order 2, ICQP)" in line.get_title()
    true, model = line.lines[0], line.lines[1]
    t, y = true.get_data()
    assert d.step in t and y[list(t).index(d.step)] == pytest.approx(d.loss_after, rel=1e-12)
    tm, ym = model.get_data()
    pos = tm > 0
    np.testing.assert_allclose(ym[pos], d.loss_before + d.slope * tm[pos] + d.curvature * tm[pos] ** 2, rtol=1e-12)
    star = [ln for ln in line.lines if ln.get_marker() == "*"][0]
    assert star.get_data()[0][0] == d.step
    assert "R(z + t·η + s·ξ) − R(z)" in slice_.get_title() and "blue: below" in slice_.get_title()
    heights = [p.get_height() for p in bars.patches]
    assert sum(heights) == r.stats.M and "M = 3, L = 3, K = 3" in bars.get_title()
    assert "verdict: descent" in fig._suptitle.get_text()
    phases = {c[0] for c in calls}
    assert phases == {"loss along the direction", "2-D slice of the loss"}
    assert ("2-D slice of the loss", 81, 81) in calls


def test_figure_without_direction_uses_random_directions_and_says_so():
    from sospcheck.plot import figure

    ex = EXAMPLES[1]
    r = check(ex.net, ex.X, ex.Y)
    fig = figure(r, r.problem(ex.X, ex.Y), grid=7, n_line=31)
    assert "no descent direction (local_minimum)" in fig.axes[0].get_title()
    assert "random directions" in fig.axes[0].get_title() and "random" in fig.axes[1].get_title()
    assert "nowhere below R(z)" in fig.axes[1].get_title()
    for ln in fig.axes[0].lines[:6:2]:  # the true curves never go below R(z) at a certified minimum
        assert np.min(ln.get_data()[1]) >= r.loss_value - 1e-12


@pytest.mark.parametrize("suffix,magic", [(".png", PNG), (".svg", b"<?xml"), (".pdf", b"%PDF")])
def test_plot_command_writes_each_format(tmp_path, capsys, suffix, magic):
    f = _example_file(tmp_path, EXAMPLES[0])
    out = tmp_path / f"fig{suffix}"
    assert main(["plot", "--params", f, "--data", f, "--loss", "squared", "-o", str(out), "--grid", "9"]) == 0
    assert out.read_bytes().startswith(magic)
    assert capsys.readouterr().out.strip() == f"verdict: descent; wrote {out}"


def test_check_plot_option_adds_a_figure_to_the_report(tmp_path, capsys):
    f = _example_file(tmp_path, EXAMPLES[1])
    out = tmp_path / "b.png"
    assert main(["check", "--params", f, "--data", f, "--loss", "squared", "--plot", str(out)]) == 0
    assert out.read_bytes().startswith(PNG) and out.stat().st_size > 20_000
    assert "verdict: local_minimum" in capsys.readouterr().out


@pytest.mark.parametrize("args,match", [
    (["check", "--plot", "out.jpg"], r"--plot must name a .png, .svg or .pdf file, got 'out.jpg'"),
    (["plot", "-o", "out.txt"], r"--out must name a .png, .svg or .pdf file"),
    (["plot", "-o", "out.png", "--grid", "2"], r"--grid must be at least 5"),
])
def test_bad_plot_options_fail_before_the_check(tmp_path, capsys, args, match):
    f = _example_file(tmp_path, EXAMPLES[0])
    cmd, *rest = args
    assert main([cmd, "--params", f, "--data", f, "--loss", "squared", *rest]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1
    assert pytest.importorskip("re").search(match, captured.err), captured.err


def test_missing_matplotlib_is_a_clear_error(tmp_path, capsys, monkeypatch):
    f = _example_file(tmp_path, EXAMPLES[0])
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["check", "--params", f, "--data", f, "--loss", "squared", "--plot", str(tmp_path / "x.png")]) == 2
    assert "--plot needs matplotlib: pip install 'sospcheck[plot]'" in capsys.readouterr().err


def test_docs_images_script_regenerates_the_readme_pictures(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["make_images.py", str(tmp_path)])
    runpy.run_path(str(ROOT / "docs" / "make_images.py"), run_name="__main__")
    for name in ("descent.png", "local-minimum.png"):
        assert (tmp_path / name).read_bytes().startswith(PNG)
        assert (ROOT / "docs" / "img" / name).exists()
    svg = (tmp_path / "check-output.svg").read_text()
    assert svg.startswith("<svg") and "verdict:" in svg and "descent" in svg
    readme = (ROOT / "README.md").read_text()
    assert "docs/img/descent.png" in readme and "docs/img/local-minimum.png" in readme
