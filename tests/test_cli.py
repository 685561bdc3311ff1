import json

import numpy as np
import pytest

from sospcheck.cli import main
from sospcheck.demo import EXAMPLES


@pytest.fixture
def files(tmp_path):
    ex = EXAMPLES[0]
    params = tmp_path / "p.npz"
    data = tmp_path / "d.npz"
    np.savez(params, W1=ex.net.W1, b1=ex.net.b1, W2=ex.net.W2, b2=ex.net.b2)
    np.savez(data, X=ex.X, Y=ex.Y)
    return tmp_path, str(params), str(data)


def test_check_writes_json_and_direction(files, capsys):
    tmp, params, data = files
    out, dfile = tmp / "r.json", tmp / "dir.npz"
    rc = main(["check", "--params", params, "--data", data, "--loss", "squared", "--json", str(out),
               "--direction-out", str(dfile)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["verdict"] == "descent"
    assert {"order", "slope_or_curvature", "step", "decrease"} <= set(report["descent"])
    assert {"M", "L", "K"} <= set(report["stats"]) and "tolerances" in report
    assert report["descent"]["decrease"] > 0
    d = np.load(dfile)
    assert set(d.files) == {"W1", "b1", "W2", "b2"}
    assert "verdict: descent" in capsys.readouterr().out


def test_one_file_may_hold_params_and_data(tmp_path, capsys):
    ex = EXAMPLES[1]
    both = tmp_path / "both.npz"
    np.savez(both, W1=ex.net.W1, b1=ex.net.b1, W2=ex.net.W2, b2=ex.net.b2, X=ex.X, Y=ex.Y,
             s_plus=1.0, s_minus=0.0)
    rc = main(["check", "--params", str(both), "--data", str(both), "--loss", "squared", "--quiet"])
    assert rc == 0 and capsys.readouterr().out.strip() == "local_minimum"


def test_json_to_stdout_and_options(files, capsys):
    _, params, data = files
    rc = main(["check", "--params", params, "--data", data, "--loss", "squared", "--reduction", "mean",
               "--weight-decay", "0.01", "--json", "-", "--tolerances", '{"gradient": 1e-6}',
               "--budget", '{"max_icqp": 8}', "--no-fragility"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["reduction"] == "mean" and report["weight_decay"] == 0.01
    assert report["tolerances"]["gradient"] == 1e-6 and report["budget"]["max_icqp"] == 8


@pytest.mark.parametrize("mutate,match", [
    (lambda p, d, t: (str(t / "missing.npz"), d), "does not exist"),
    (lambda p, d, t: ((t / "junk.npz").write_text("not a zip") and str(t / "junk.npz"), d), "not a readable .npz"),
    (lambda p, d, t: (np.savez(t / "nob1.npz", W1=np.ones((1, 1)), W2=np.ones((1, 1)), b2=np.zeros(1))
                      or str(t / "nob1.npz"), d), r"lacks key\(s\) \['b1'\]"),
    (lambda p, d, t: (p, np.savez(t / "noy.npz", X=np.zeros((2, 1))) or str(t / "noy.npz")), r"lacks key\(s\) \['Y'\]"),
    (lambda p, d, t: (p, np.savez(t / "wrongdx.npz", X=np.zeros((2, 3)), Y=np.zeros(2)) or str(t / "wrongdx.npz")),
     "feature column"),
    (lambda p, d, t: (p, np.savez(t / "nan.npz", X=np.array([[np.nan], [0]]), Y=np.zeros(2)) or str(t / "nan.npz")),
     "NaN"),
    (lambda p, d, t: (p, np.savez(t / "empty.npz", X=np.zeros((0, 1)), Y=np.zeros(0)) or str(t / "empty.npz")),
     "empty"),
    (lambda p, d, t: (p, np.savez(t / "rows.npz", X=np.zeros((2, 1)), Y=np.zeros(3)) or str(t / "rows.npz")),
     "3 row"),
    (lambda p, d, t: (np.savez(t / "slopes.npz", W1=np.ones((1, 1)), b1=np.zeros(1), W2=np.ones((1, 1)),
                               b2=np.zeros(1), s_plus=1.0, s_minus=1.0) or str(t / "slopes.npz"), d), "must differ"),
])
def test_bad_input_gives_one_line_error_and_exit_2(files, capsys, mutate, match):
    tmp, params, data = files
    p, d = mutate(params, data, tmp)
    rc = main(["check", "--params", p, "--data", d, "--loss", "squared"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("sospcheck: error:") and len(err.splitlines()) == 1
    assert pytest.importorskip("re").search(match, err), err


def test_bad_labels_for_logistic(files, capsys):
    tmp, params, _ = files
    np.savez(tmp / "lab.npz", X=np.zeros((2, 1)), Y=np.array([0.0, 3.0]))
    assert main(["check", "--params", params, "--data", str(tmp / "lab.npz"), "--loss", "logistic"]) == 2
    assert "labels" in capsys.readouterr().err


def test_bad_json_option(files, capsys):
    _, params, data = files
    assert main(["check", "--params", params, "--data", data, "--loss", "squared", "--tolerances", "{oops"]) == 2
    assert "--tolerances must be a JSON object" in capsys.readouterr().err
    assert main(["check", "--params", params, "--data", data, "--loss", "squared", "--budget", '{"nope": 1}']) == 2
    assert "unknown key" in capsys.readouterr().err


def test_demo_runs_both_examples(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "looks like a minimum" in out and "verdict: descent" in out and "verdict: local_minimum" in out
    assert "(c) a second-order saddle" in out and "order 2 from ICQP" in out


# ---------------------------------------------------------------- rich output, progress, new options


def test_report_has_panel_neuron_table_second_order_and_tolerances(files, capsys):
    _, params, data = files
    assert main(["check", "--params", params, "--data", data, "--loss", "squared"]) == 0
    captured = capsys.readouterr()
    for part in ("╭─ sospcheck", "verdict: descent", "per neuron", "decided by", "descent: extreme ray",
                 "second order: not needed", "tolerances, each relative to its scale", "budget:"):
        assert part in captured.out, part
    assert captured.err == ""  # progress only on a terminal


def test_quiet_and_json_stdout_print_nothing_else(files, capsys):
    _, params, data = files
    assert main(["check", "--params", params, "--data", data, "--loss", "squared", "--quiet"]) == 0
    assert capsys.readouterr().out == "descent\n"
    assert main(["check", "--params", params, "--data", data, "--loss", "squared", "--json", "-"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out)["schema_version"] == "2.2" and out.lstrip().startswith("{")


def test_s_minus_option_sets_the_activation_when_the_file_has_none(files, capsys):
    _, params, data = files
    assert main(["check", "--params", params, "--data", data, "--loss", "squared", "--s-minus", "0.01",
                 "--json", "-", "--no-fragility"]) == 0
    assert json.loads(capsys.readouterr().out)["activation"] == {"s_plus": 1.0, "s_minus": 0.01}
    assert main(["check", "--params", params, "--data", data, "--loss", "squared", "--s-plus", "0"]) == 2
    assert "`s_plus` must be > 0" in capsys.readouterr().err


def test_progress_display_draws_bars_on_a_terminal():
    import io

    from rich.console import Console

    from sospcheck.cli import ProgressDisplay

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=100)
    with ProgressDisplay(console=console) as display:
        with display.phase("reading --params"):
            pass
        for i in range(1, 5):
            display("2-D slice of the loss", i, 4)
    assert display.enabled and "2-D slice of the loss" in display.progress.tasks[1].description
    assert display.progress.tasks[1].completed == 4 and display.progress.tasks[0].finished
    off = ProgressDisplay(enabled=False, console=Console(file=io.StringIO(), force_terminal=True))
    with off:
        off("x", 1, 2)
    assert not off.enabled and off.console.file.getvalue() == ""


def test_check_gets_the_progress_callback(files, monkeypatch, capsys):
    import sospcheck.cli as cli

    seen = {}
    real = cli.check

    def check_with_progress(net, X, Y, progress=None, **kw):
        seen["progress"] = progress
        progress("data pass", 1, 1)
        return real(net, X, Y, **kw)

    monkeypatch.setattr(cli, "check", check_with_progress)
    _, params, data = files
    assert main(["check", "--params", params, "--data", data, "--loss", "squared", "--quiet"]) == 0
    assert isinstance(seen["progress"], cli.ProgressDisplay) and "data pass" in seen["progress"].tasks


def test_demo_uses_the_rich_report(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert out.count("╭─ sospcheck") == 3 and "T3 negative" in out and "per neuron" in out


@pytest.mark.parametrize("option,text,match", [
    ("--tolerances", "[" * 100_000 + "]" * 100_000, "--tolerances must be a JSON object"),
    ("--budget", '{"max_icqp": ' + "9" * 5000 + "}", "--budget must be a JSON object"),
    ("--budget", '{"max_icqp": 1e400}', r"budget `max_icqp` must be a positive integer, got inf"),
    ("--tolerances", '{"gradient": NaN}', r"tolerance `gradient` must be a finite number >= 0, got nan"),
    ("--tolerances", '{"gradient": "1e-6"}', r"tolerance `gradient` must be a finite number >= 0, got '1e-6'"),
])
def test_json_options_refuse_what_is_not_a_plain_number(files, capsys, option, text, match):
    _, params, data = files
    assert main(["check", "--params", params, "--data", data, "--loss", "squared", option, text]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and pytest.importorskip("re").search(match, err), err[:300]


def test_outputs_are_checked_before_the_check_runs(files, capsys, monkeypatch):
    import sospcheck.cli as cli

    tmp, params, data = files
    monkeypatch.setattr(cli, "check", lambda *a, **k: pytest.fail("the check ran before the outputs were checked"))
    (tmp / "ro.json").write_text("{}")
    (tmp / "ro.json").chmod(0o444)
    for option, path, match in (("--json", tmp / "ro.json", "is read-only"),
                                ("--direction-out", tmp / "none" / "d.npz", "does not exist"),
                                ("--direction-out", tmp, "is a directory")):
        assert main(["check", "--params", params, "--data", data, "--loss", "squared", option, str(path)]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.startswith(f"sospcheck: error: {option} ") and match in captured.err
    assert sorted(p.name for p in tmp.iterdir()) == ["d.npz", "p.npz", "ro.json"]


def test_grid_is_bounded_before_any_work(files, capsys):
    _, params, data = files
    assert main(["plot", "--params", params, "--data", data, "--loss", "squared", "-o", "x.png", "--grid", "100000"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "--grid must be at least 5 and at most 401" in captured.err


def test_a_non_finite_slope_flag_is_named(tmp_path, capsys):
    np.savez(tmp_path / "p.npz", W1=np.ones((2, 3)), b1=np.zeros(2), W2=np.ones((1, 2)), b2=np.zeros(1))
    np.savez(tmp_path / "d.npz", X=np.ones((4, 3)), Y=np.ones(4))
    argv = ["check", "--params", str(tmp_path / "p.npz"), "--data", str(tmp_path / "d.npz"), "--loss", "squared"]
    assert main(argv + ["--s-plus", "nan"]) == 2
    assert "--s-plus must be a finite number" in capsys.readouterr().err


def test_device_option_runs_the_check_with_the_torch_backend(files, capsys, monkeypatch):
    pytest.importorskip("torch")
    import sospcheck.cli as cli

    tmp, params, data = files
    seen = {}
    real = cli.check

    def spy(*a, **k):
        seen.update(k)
        return real(*a, **k)

    monkeypatch.setattr(cli, "check", spy)
    base = ["check", "--params", params, "--data", data, "--loss", "squared", "--quiet"]
    assert main(base) == 0
    host = capsys.readouterr().out
    assert main(base + ["--device", "cpu"]) == 0
    assert capsys.readouterr().out == host and seen["backend"] == "torch" and seen["device"] == "cpu"
    monkeypatch.setattr(cli, "check", lambda *a, **k: pytest.fail("the check ran with a bad --device"))
    assert main(base + ["--device", "tpu"]) == 2
    assert capsys.readouterr().err.startswith("sospcheck: error: --device: ")
