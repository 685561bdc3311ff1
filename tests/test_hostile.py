"""Hostile and careless input: every probe ends fast with one line that names the argument, nothing is
silently converted, and no file appears but those named.

One command-line probe of each class runs as a subprocess (a hang is then a timeout, not a stuck test
run), all at once; the others call ``main()`` in this process, under an alarm.
"""

import os
import re
import signal
import subprocess
import sys
import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import sospcheck
from sospcheck import Budget, Tolerances, TwoLayerNet, check
from sospcheck.cli import main
from sospcheck.demo import EXAMPLES
from sospcheck.model import MAX_ELEMENTS
from sospcheck.options import Options
from sospcheck.validation import validate_engine, validate_progress

SRC = Path(sospcheck.__file__).resolve().parents[1]  # the source under test, also for the subprocesses
HUGE = (100_000, 100_000)
EX = EXAMPLES[0]  # a first-order descent: the check is quick
WEIGHTS = dict(W1=EX.net.W1, b1=EX.net.b1, W2=EX.net.W2, b2=EX.net.b2)

PROBES = {}


def probe(mention, *, ok=False, subprocess=False):
    """Register a command-line probe: ``make(d)`` writes its inputs into ``d`` and returns the arguments;
    ``mention``: a pattern the error line must match; ``ok``: the command must succeed instead."""
    def register(make):
        PROBES[make.__name__] = (make, mention, ok, subprocess)
        return make
    return register


def _point(d: Path, **weights) -> list:
    np.savez(d / "p.npz", **{**WEIGHTS, **weights})
    np.savez(d / "d.npz", X=EX.X, Y=EX.Y)
    return ["check", "--params", "p.npz", "--data", "d.npz", "--loss", "squared"]


def _args(d: Path, params: str, data: str = "d.npz") -> list:
    np.savez(d / "d.npz", X=EX.X, Y=EX.Y)
    return ["check", "--params", params, "--data", data, "--loss", "squared"]


def _torch_file(d: Path, name: str, state: dict) -> str:
    torch = pytest.importorskip("torch")
    torch.save({k: torch.tensor(v) if isinstance(v, np.ndarray) else v for k, v in state.items()}, d / name)
    return name


# ---------------------------------------------------------------- hangs


@probe(r"--params path 'p\.npz' is a FIFO")
def fifo_params(d):
    os.mkfifo(d / "p.npz")
    return _args(d, "p.npz")


@probe(r"--params path 'weights' is a FIFO", subprocess=True)
def fifo_params_no_extension(d):
    os.mkfifo(d / "weights")
    return _args(d, "weights")


@probe(r"--data path 'x\.npz' is a FIFO")
def fifo_data(d):
    os.mkfifo(d / "x.npz")
    return _point(d)[:-4] + ["--data", "x.npz", "--loss", "squared"]


@probe(r"--params path 'zero' is a device")
def dev_zero_symlink(d):
    os.symlink("/dev/zero", d / "zero")
    return _args(d, "zero")


# ---------------------------------------------------------------- tracebacks


@probe(r"--params file 'p\.npz': `W1` has shape \(100000, 100000\)", subprocess=True)
def npy_header_declares_a_huge_shape(d):
    args = _point(d)
    with zipfile.ZipFile(d / "p.npz", "w") as z:  # a 200-byte file whose W1 header promises 80 GB
        with z.open("W1.npy", "w") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": HUGE})
        for k in ("b1", "W2", "b2"):
            with z.open(f"{k}.npy", "w") as f:
                np.lib.format.write_array(f, WEIGHTS[k])
    return args


@probe(r"--params file 'w\.pt': `0\.weight` has shape \(100000, 100000\)")
def pt_expanded_float64(d):
    torch = pytest.importorskip("torch")
    state = {"0.weight": torch.zeros(1, dtype=torch.float64).expand(*HUGE), "2.weight": torch.zeros(1, HUGE[0])}
    return _args(d, _torch_file(d, "w.pt", state))


@probe(r"--params file 'w\.pt': `0\.weight` has shape \(100000, 100000\)")
def pt_expanded_float32(d):
    torch = pytest.importorskip("torch")
    state = {"0.weight": torch.zeros(1, dtype=torch.float32).expand(*HUGE), "2.weight": torch.zeros(1, HUGE[0])}
    return _args(d, _torch_file(d, "w.pt", state))


@probe(r"--grid must be at least 5 and at most 401")
def plot_grid_too_large(d):
    return ["plot"] + _point(d)[1:] + ["-o", "out.png", "--grid", "100000"]


# ---------------------------------------------------------------- silently wrong


@probe(r"--params file 'p\.npz': array 'W1' holds complex numbers \(dtype complex128\)", subprocess=True)
def complex_weights(d):
    return _point(d, W1=EX.net.W1 + 1j)


@probe(r"--data file 'd\.npz': array 'Y' holds complex numbers")
def complex_targets(d):
    args = _point(d)
    np.savez(d / "d.npz", X=EX.X, Y=EX.Y + 1j)
    return args


@probe(r"--params file 'w\.pt': `0\.weight` must be a real tensor, got dtype torch\.complex128")
def complex_torch_weight(d):
    state = {"0.weight": EX.net.W1 + 1j, "0.bias": EX.net.b1, "2.weight": EX.net.W2, "2.bias": EX.net.b2}
    return _args(d, _torch_file(d, "w.pt", state))


@probe(r"--params file 'p\.npz': array 'W1' holds strings")
def string_weights(d):
    return _point(d, W1=np.array([["1.0"]]))


@probe(r"--params file 'p\.npz': array 'W1' holds datetimes")
def datetime_weights(d):
    return _point(d, W1=np.array([["2020-01-01"]], dtype="datetime64[D]"))


# JSON options: booleans are no numbers, counts are integers, limits finite
_JSON = {"json_boolean_tolerance": ("--tolerances", '{"gradient": true}',
                                    r"tolerance `gradient` must be a finite number >= 0, got True"),
         "json_boolean_budget": ("--budget", '{"max_icqp": true}', r"budget `max_icqp` must be a positive integer, got True"),
         "json_fractional_count": ("--budget", '{"max_icqp": 0.5}', r"budget `max_icqp` must be a positive integer, got 0\.5"),
         "json_infinite_limit": ("--budget", '{"milp_time_limit": Infinity}',
                                 r"budget `milp_time_limit` must be a finite number > 0, got inf")}
for _name, (_option, _text, _mention) in _JSON.items():
    PROBES[_name] = (lambda d, option=_option, text=_text: _point(d) + [option, text], _mention, False, False)


@probe(r"--params file 'p\.npz' has unexpected key\(s\) \['W3'\]")
def unknown_key_in_params(d):
    return _point(d, W3=np.ones((1, 1)))


# ---------------------------------------------------------------- late or vague


@probe(r"--json 'missing/r\.json': the folder '.*missing' does not exist", subprocess=True)
def json_into_a_missing_folder(d):
    return _point(d) + ["--json", "missing/r.json"]


@probe(r"--json 'sub' is a directory")
def json_onto_a_directory(d):
    (d / "sub").mkdir()
    return _point(d) + ["--json", "sub"]


@probe(r"--direction-out '/proc/dir\.npz' cannot be written")
def direction_into_proc(d):
    return _point(d) + ["--direction-out", "/proc/dir.npz"]


@probe(r"--plot 'sub\.png' is a directory")
def plot_onto_a_directory(d):
    pytest.importorskip("matplotlib")
    (d / "sub.png").mkdir()
    return _point(d) + ["--plot", "sub.png"]


@probe(r"the loss or its derivatives overflow at this point: the squared weight norm \|z\|\^2 is not finite")
def overflowing_weights(d):
    return _point(d, W1=EX.net.W1 * 1e300, W2=EX.net.W2 * 1e300)


@probe(r"overflow at this point: the weight decay term \(weight_decay/2 \|z\|\^2 and its gradient\)", subprocess=True)
def overflowing_weight_decay(d):
    return _point(d) + ["--weight-decay", "1e308"]


@probe(r"--params file 'evil\.pt' is not a PyTorch state_dict .*Unsupported global: GLOBAL evil\.func")
def torch_file_with_escape_codes(d):
    torch = pytest.importorskip("torch")
    torch.save({"a": torch.zeros(1)}, d / "ok.pt")
    with zipfile.ZipFile(d / "ok.pt") as z, zipfile.ZipFile(d / "evil.pt", "w") as out:
        for n in z.namelist():  # a global whose name carries terminal escape codes
            out.writestr(n, b"\x80\x02c\x1b[31mevil\x1b[0m\nfunc\n)R." if n.endswith("data.pkl") else z.read(n))
    (d / "ok.pt").unlink()
    return _args(d, "evil.pt")


@probe("", ok=True, subprocess=True)
def direction_out_is_written_where_named(d):
    return _point(d) + ["--quiet", "--direction-out", "dir.out"]


def _files(d: Path) -> set:
    return {str(p.relative_to(d)) for p in d.rglob("*")}


def _run(d: Path, args: list) -> tuple:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    before = _files(d)
    try:
        res = subprocess.run([sys.executable, "-m", "sospcheck.cli", *args], cwd=d, env=env, capture_output=True,
                             text=True, timeout=60)
        outcome = (res.returncode, res.stdout, res.stderr)
    except subprocess.TimeoutExpired:
        outcome = None
    return d, outcome, before, _files(d)


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    """The subprocess probes, each in its own folder, all at once: ``name -> (folder, (status, stdout,
    stderr) or None on a timeout, files before, files after)``."""
    jobs = {}
    for name, (make, _, _, sub) in PROBES.items():
        if not sub:
            continue
        d = tmp_path_factory.mktemp(name)
        jobs[name] = (d, make(d))
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(_run, d, args) for name, (d, args) in jobs.items()}
        return {name: f.result() for name, f in futures.items()}


def _one_error_line(name: str, outcome, before: set, after: set) -> None:
    assert outcome is not None, "no answer within 60 s"
    status, out, err = outcome
    assert status == 2 and out == "", outcome
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sospcheck: error: "), err
    assert re.search(PROBES[name][1], lines[0]), lines[0]
    assert "\x1b" not in err and "Warning" not in err
    assert after == before


@pytest.mark.parametrize("name", [n for n, (_, _, ok, sub) in PROBES.items() if sub and not ok])
def test_cli_probe_in_a_subprocess(cli_runs, name):
    _, outcome, before, after = cli_runs[name]
    _one_error_line(name, outcome, before, after)


class Hung(BaseException):
    """Raised by the alarm; not an OSError, so that main() cannot turn it into an error line."""


def _hung(signum, frame):
    raise Hung("no answer within 20 s")


@pytest.mark.parametrize("name", [n for n, (_, _, ok, sub) in PROBES.items() if not sub and not ok])
def test_cli_probe(tmp_path, monkeypatch, capsys, name):
    args = PROBES[name][0](tmp_path)
    monkeypatch.chdir(tmp_path)
    before = _files(tmp_path)
    previous = signal.signal(signal.SIGALRM, _hung)
    signal.alarm(20)  # a blocking open() or an endless read is interrupted
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a RuntimeWarning would surface as a traceback
            status = main(args)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    captured = capsys.readouterr()
    _one_error_line(name, (status, captured.out, captured.err), before, _files(tmp_path))


def test_direction_out_writes_exactly_the_path_given(cli_runs):
    d, (status, out, err), before, after = cli_runs["direction_out_is_written_where_named"]
    assert status == 0 and out.strip() == "descent", err
    assert after - before == {"dir.out"}
    assert set(np.load(d / "dir.out").files) == {"W1", "b1", "W2", "b2"}


# ---------------------------------------------------------------- the same classes through the API


def _net(**kw):
    return TwoLayerNet(**{**WEIGHTS, **kw})


API = {
    "broadcast_weights": (lambda: _net(W1=np.broadcast_to(1.0, HUGE), b1=np.zeros(HUGE[0]), W2=np.ones((1, HUGE[0]))),
                          ValueError, r"`W1` has shape \(100000, 100000\) \(10,000,000,000 elements\), over the limit"),
    "complex_data": (lambda: check(EX.net, EX.X + 1j, EX.Y), TypeError, r"`X` must be .* got ndarray of complex"),
    "complex_targets": (lambda: check(EX.net, EX.X, EX.Y * 1j), TypeError, r"`Y` must be .* complex"),
    "complex_list": (lambda: _net(W1=[[1 + 1j]] * 2), TypeError, r"`W1` must be .* got list of complex numbers"),
    "string_list": (lambda: _net(W1=[["1.0"]] * 2), TypeError, r"`W1` must be .* got list of strings"),
    "string_array": (lambda: _net(W1=np.array([["1.0"]] * 2)), TypeError, r"`W1` must be .* strings"),
    "bytes_array": (lambda: _net(b1=np.array([b"1", b"2"])), TypeError, r"`b1` must be .* bytes"),
    "datetime_array": (lambda: _net(W1=np.array([["2020-01-01"]] * 2, dtype="datetime64[D]")), TypeError,
                       r"`W1` must be .* datetimes"),
    "timedelta_array": (lambda: _net(b2=np.array([1], dtype="timedelta64[s]")), TypeError, r"`b2` .* timedeltas"),
    "object_array": (lambda: _net(b2=np.array([None])), TypeError, r"`b2` .* Python objects"),
    "targets_none": (lambda: check(EX.net, EX.X, None), TypeError, r"`Y` must be a numeric array of real numbers, got None"),
    "slope_none": (lambda: _net(s_plus=None), TypeError, r"`s_plus` must be a real number, got None"),
    "slope_boolean": (lambda: _net(s_minus=True), TypeError, r"`s_minus` must be a number, got True"),
    "json_boolean": (lambda: Tolerances.from_any({"gradient": True}), ValueError, r"tolerance `gradient`"),
    "fractional_count": (lambda: Budget.from_any({"max_icqp": 0.5}), ValueError, r"budget `max_icqp` .* integer"),
    "infinite_limit": (lambda: Budget(milp_time_limit=float("inf")), ValueError, r"budget `milp_time_limit`"),
    "progress_not_callable": (lambda: validate_progress("x"), TypeError, r"`progress` must be a callable"),
    "device_nonsense": (lambda: validate_engine("auto", "torch", "nonsense"), ValueError,
                        r"`device` must be 'cpu', 'cuda' or 'cuda:N', got 'nonsense'"),
    "device_without_torch_backend": (lambda: validate_engine("auto", "numpy", "cpu"), ValueError,
                                     r"`device` 'cpu' is used only with backend='torch'"),
    "overflowing_weights": (lambda: check(_net(W1=EX.net.W1 * 1e300, W2=EX.net.W2 * 1e300), EX.X, EX.Y), ValueError,
                            r"overflow at this point: the squared weight norm"),
    "overflowing_data": (lambda: check(EX.net, EX.X * 1e300, EX.Y), ValueError, r"overflow at this point"),
    "overflowing_weight_decay": (lambda: check(EX.net, EX.X, EX.Y, weight_decay=1e308), ValueError,
                                 r"overflow at this point: the weight decay term"),
}


@pytest.mark.parametrize("name", API)
def test_api_probe_names_the_argument_without_warnings(name):
    if name.startswith("device"):
        pytest.importorskip("torch")
    call, exc, match = API[name]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a RuntimeWarning would surface as another exception
        with pytest.raises(exc, match=match):
            call()


def test_pre_activations_over_the_limit_are_refused(monkeypatch):
    net, X, Y = TwoLayerNet(np.ones((4, 1)), None, np.ones((1, 4)), None), np.ones((3, 1)), np.ones(3)
    monkeypatch.setattr(sospcheck.model, "MAX_ELEMENTS", 11)  # X, Y and the weights fit, N (3 x 4) does not
    with pytest.raises(ValueError, match=r"`X` needs pre-activations X Z' of shape \(3, 4\) \(12 elements\)"):
        check(net, X, Y)


@pytest.mark.parametrize("kw,match", [(dict(backend="torch", device="nonsense"), "`device`"),
                                      (dict(progress="x"), "`progress` must be a callable")])
def test_check_refuses_a_bad_device_or_progress_before_any_work(kw, match):
    pytest.importorskip("torch")
    with pytest.raises((ValueError, TypeError), match=match):
        check(EX.net, EX.X, EX.Y, **kw)


def test_numpy_scalars_are_legitimate_options():
    r = check(EX.net, EX.X, EX.Y, tolerances={"gradient": np.float32(1e-6)},
              budget={"max_icqp": np.int64(10), "milp_time_limit": np.float64(5)}, fragility=False)
    assert r.tolerances.gradient == pytest.approx(1e-6) and type(r.budget.max_icqp) is int
    assert '"max_icqp": 10' in r.to_json()


def test_limits_are_documented_numbers():
    assert MAX_ELEMENTS == 2**27 and Budget(max_icqp=1e4).max_icqp == 10_000


def test_options_base_serves_any_record_of_named_numbers():
    @dataclass(frozen=True)
    class Steps(Options):
        iters: int = 3
        radius: float = 0.1

        argument = "steps"
        label = ""

    assert Steps.from_any({"iters": np.int64(5)}) == Steps(5, 0.1) and Steps.from_any(None) == Steps()
    with pytest.raises(ValueError, match=r"^`iters` must be a non-negative integer, got 0.5$"):
        Steps.from_any({"iters": 0.5})
    with pytest.raises(ValueError, match=r"^`radius` must be a finite number >= 0, got -1$"):
        Steps(radius=-1)
    with pytest.raises(ValueError, match=r"`steps` has unknown key\(s\) \['x'\]; known: \['iters', 'radius'\]"):
        Steps.from_any({"x": 1})
    with pytest.raises(TypeError, match=r"`steps` must be a Steps, a dict or None, got list"):
        Steps.from_any([1])


def _gradient_overflow_case(x_scale: float, w1_scale: float):
    rng = np.random.default_rng(4)
    X = rng.standard_normal((6, 2)) * x_scale
    net = TwoLayerNet(rng.standard_normal((3, 2)) * w1_scale, rng.standard_normal(3), rng.standard_normal((1, 3)),
                      np.zeros(1))
    return net, X, rng.standard_normal((6, 1))


@pytest.mark.parametrize("x_scale, w1_scale, refused", [
    (1.0, 1.0, False),  # the bound decides: the gradient is never formed
    (1e150, 1e-150, False),  # the bound squares past 1e300, the gradient itself (squared ~1e300) does not overflow
    (1e160, 1e-160, True),  # the gradient squared overflows (the outputs and the loss do not)
])
def test_the_weight_gradient_overflow_test_forms_the_gradient_only_when_its_bound_is_near_overflow(
        monkeypatch, x_scale, w1_scale, refused):
    import sospcheck.validation as validation
    from sospcheck.losses import get_loss

    formed = []
    real = validation.transpose_times
    monkeypatch.setattr(validation, "transpose_times", lambda *a: formed.append(1) or real(*a))
    net, X, Y = _gradient_overflow_case(x_scale, w1_scale)
    L = get_loss("squared")
    if refused:
        with pytest.raises(ValueError, match=r"overflow at this point: the gradient in the weights, squared"):
            validation.check_finite_point(net, X, L.prepare(Y, 1), L, 1.0, 0.0)
    else:
        fwd = validation.check_finite_point(net, X, L.prepare(Y, 1), L, 1.0, 0.0)
        assert np.all(np.isfinite(fwd.out))
    assert bool(formed) == (x_scale > 1.0)
