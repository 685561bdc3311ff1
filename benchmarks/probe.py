"""One benchmark case in a fresh interpreter: ``python benchmarks/probe.py SPEC.json``.

Running each case in its own process gives an honest peak memory (``ru_maxrss`` starts from an
interpreter that has only imported the libraries) and lets the parent stop a case that runs past its
time limit without losing the stages already done: every stage prints one JSON line as it finishes.

SPEC: ``{"data": {"m", "dx", "dy", "seed"} or {"npz": "data.npz"} (arrays X, Y), "net": "net.npz",
"warm_up": optional {planted_minimum's arguments, "solver"} (see :func:`warm_up`), "stages": [{"stage": NAME, "label": optional name of its record, ...}, ...]}``.
Stages (run in order, on the current net; any stage may carry ``time_limit`` (wall) or ``cpu_limit`` (CPU)
seconds, past which it is interrupted and reported as ``{"interrupted": ..., "seconds": ...}``):
  refit         refit the output layer (least squares), as a random point's baseline
  gradient      best wall time of one full-batch forward+backward (common.loss_and_grad)
  check         ``check(net, X, Y, snap=..., solver=..., fragility=...)``; with ``snap`` the later
                stages use the snapped net, which is written to ``save_net`` if given
  second_order  the first-order pieces, then ``second_order_test`` forced on the point (``solver``,
                ``backend``); ``seconds`` covers both
  smooth        the autograd Lanczos test of ``smooth_baseline`` (``arpack_tol``)
  pieces        wall time of the first-order pieces alone (forward, boundary, BVLS)
  hvp           ``n`` Hessian-vector products (``HessianOperator.matmat``, one column) at the point
Every line carries ``rss_peak`` (bytes, the process's peak resident set during that stage; "start" and
"data" also give ``rss``, the resident set then), ``stage_wall_s`` / ``stage_cpu_s`` (the whole stage,
setup included; CPU time is what other jobs on a shared machine cannot inflate) and ``products_counted`` (Hessian-vector
products done by ``sospcheck.operators.HessianOperator.matmat`` in that stage, columns counted).
"""

from __future__ import annotations

import ctypes
import gc
import json
import resource
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402  (first: it pins the BLAS threads before NumPy loads)
import numpy as np  # noqa: E402
from sospcheck import operators  # noqa: E402
from sospcheck.geometry import data_span  # noqa: E402
from sospcheck.snap import refit_output_layer  # noqa: E402

_PRODUCTS = [0]
_matmat = operators.HessianOperator.matmat


def _counting_matmat(self, Theta, *args, **kw):
    _PRODUCTS[0] += Theta.shape[1]
    return _matmat(self, Theta, *args, **kw)


operators.HessianOperator.matmat = _counting_matmat


class _TimeLimit(Exception):
    pass


def _alarm(signum, frame):
    raise _TimeLimit()


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_peak() -> int:
    """Peak resident set of this process since the last :func:`reset_peak` (``VmHWM``). Not
    ``getrusage().ru_maxrss``: on Linux that survives ``exec`` and starts at the parent's size."""
    kb = _status_kb("VmHWM")
    return kb * 1024 if kb is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss_now() -> int:
    kb = _status_kb("VmRSS")
    return kb * 1024 if kb is not None else 0


def reset_peak() -> None:
    """Start a new peak (Linux >= 4.0: writing 5 to ``clear_refs`` resets ``VmHWM``) so that each stage
    reports its own peak; harmless where unsupported (the peak is then the process's so far)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def emit(record: dict) -> None:
    print(json.dumps(record, default=_jsonable), flush=True)


def _jsonable(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)


def load_net(path: str):
    z = np.load(path)
    return common.TwoLayerNet(z["W1"], z["b1"], z["W2"], z["b2"])


def save_net(net, path: str) -> None:
    np.savez(path, W1=net.W1, b1=net.b1, W2=net.W2, b2=net.b2)


def stage_refit(net, X, Y, spec):
    t, (net, _) = common.timed(lambda: refit_output_layer(net, X, Y, common.SQUARED, 1.0, 0.0))
    return net, {"seconds": t}


def stage_gradient(net, X, Y, spec):
    return net, {"seconds": common.gradient_seconds(net, X, Y)}


def stage_check(net, X, Y, spec):
    kw = {k: spec[k] for k in ("snap", "solver", "fragility", "backend", "device") if k in spec}
    t, res = common.timed_check(net, X, Y, **kw)
    rec = {"seconds": t, "verdict": res.verdict.value, "described": common.describe_result(res),
           "timings": res.timings, "M": res.stats.M, "L": res.stats.L, "K": res.stats.K,
           "n_params_reduced": res.stats.n_params_reduced, "solver": res.stats.solver,
           "qps": [q.outcome for q in res.stats.qps]}
    if res.snap is not None:
        rec["snap"] = {"n_pairs": res.snap.n_pairs, "dZ_norm": res.snap.dZ_norm,
                       "loss_before": res.snap.loss_before, "loss_after": res.snap.loss_after}
    if spec.get("save_net"):
        save_net(res.net, spec["save_net"])
    return res.net, rec


def stage_second_order(net, X, Y, spec):
    backend = spec.get("backend", "numpy")
    with common.data_placement(backend, spec.get("device")):
        rec = common.forced_second_order(net, X, Y, spec.get("solver", "auto"), backend, spec.get("device"))
    return net, {**rec, "seconds": rec["pipeline_s"]}


def stage_smooth(net, X, Y, spec):
    from smooth_baseline import smooth_test, torch_available

    if not torch_available():
        return net, {"skipped": "torch is not importable"}
    return net, smooth_test(net, X, Y, arpack_tol=spec.get("arpack_tol", 1e-9))


def stage_pieces(net, X, Y, spec):
    with common.data_placement(spec.get("backend", "numpy"), spec.get("device")):
        pieces = common.first_order_pieces(net, X, Y)
    return net, {"seconds": pieces.seconds, "M": int(pieces.boundary.sum())}


def stage_hvp(net, X, Y, spec):
    """``n`` products with the base operator the matrix-free solver would build (data span included)."""
    pieces = common.first_order_pieces(net, X, Y)
    pt = pieces.pt
    t_span, V = common.timed(lambda: data_span(pt.fwd.Xbar, pieces.tol.rank))
    Xr = pt.fwd.Xbar @ V
    J = net.slope(pt.fwd.N).astype(float)
    J[pieces.boundary] = net.s_plus
    op = operators.make_operator(spec.get("backend", "numpy"), pt.fwd.O, Xr, net.W2, pt.r, pt.Hl, J, 0.0,
                                 identity_hessian=True)
    theta = np.random.default_rng(0).standard_normal((op.layout.n, 1))
    n = int(spec.get("n", 3))
    times = []
    for _ in range(n):
        t, _ = common.timed(lambda: op.matmat(theta))
        times.append(t)
    return net, {"seconds": sum(times), "per_product_s": min(times), "data_span_s": t_span, "n_params": op.layout.n}


STAGES = {"refit": stage_refit, "gradient": stage_gradient, "check": stage_check, "second_order": stage_second_order,
          "smooth": stage_smooth, "pieces": stage_pieces, "hvp": stage_hvp}


def run_stage(net, X, Y, st: dict):
    """One stage; with ``time_limit`` (wall seconds, SIGALRM) or ``cpu_limit`` (CPU seconds of this
    process, SIGPROF: what a shared machine cannot stretch) it is interrupted and reported as such."""
    limit, cpu_limit = int(st.get("time_limit", 0)), float(st.get("cpu_limit", 0))
    signal.signal(signal.SIGALRM, _alarm)
    signal.signal(signal.SIGPROF, _alarm)
    signal.alarm(limit)
    signal.setitimer(signal.ITIMER_PROF, cpu_limit)
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        net, rec = STAGES[st["stage"]](net, X, Y, st)
    except _TimeLimit:
        what = f"the time limit ({limit} s)" if not cpu_limit else f"the CPU time limit ({cpu_limit:g} s)"
        rec = {"interrupted": f"stopped at {what}", "seconds": time.perf_counter() - t0}
    finally:
        signal.alarm(0)
        signal.setitimer(signal.ITIMER_PROF, 0)
    rec["stage_cpu_s"] = time.process_time() - c0  # robust to other jobs on the machine (one BLAS thread)
    rec["stage_wall_s"] = time.perf_counter() - t0
    return net, rec


def warm_up(spec: dict) -> None:
    """A check on a small planted minimum of the same widths (``spec["warm_up"]``: ``planted_minimum``'s
    arguments, ``solver``) before the baseline: the library code the check loads lazily and the BLAS work
    buffers, fixed costs that do not grow with the data, are then resident before "start". The memory the
    warm-up's arrays leave in the allocator's free pool is handed back (``malloc_trim``), so that the
    measured check cannot reuse it unseen."""
    warm = dict(spec["warm_up"])
    solver = warm.pop("solver", "auto")
    inst = common.planted_minimum(**warm)
    common.timed_check(inst["net"], inst["X"], inst["Y"], solver=solver)
    del inst
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError) as exc:  # not glibc: the pool stays, and the record says so
        emit({"stage": "warm_up", "malloc_trim": f"unavailable ({exc})"})


def main(path: str) -> int:
    spec = json.loads(Path(path).read_text())
    if spec.get("warm_up"):
        warm_up(spec)
        reset_peak()
    emit({"stage": "start", "rss_peak": rss_peak(), "rss": rss_now()})
    d = spec["data"]
    if "npz" in d:
        z = np.load(d["npz"])
        X, Y = z["X"], z["Y"]
    else:
        X, Y = common.gaussian_data(d["m"], d["dx"], d["dy"], d["seed"])
    net = load_net(spec["net"])
    emit({"stage": "data", "rss_peak": rss_peak(), "rss": rss_now(), "X_bytes": X.nbytes})
    for st in spec["stages"]:
        before = _PRODUCTS[0]
        reset_peak()
        net, rec = run_stage(net, X, Y, st)
        emit({"stage": st.get("label", st["stage"]), **rec, "products_counted": _PRODUCTS[0] - before,
              "rss_peak": rss_peak()})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
