"""One run's record: train (a group of seeds at once), then the paper's estimates and the full check per seed
(after snap, and in nearby mode: the verdict at the exact stationary point next to the weights).

Both task functions catch every exception and return it in the record (``status: "error"``), so a
failing run is written down and the sweep goes on.
"""

from __future__ import annotations

import platform
import time
import traceback

import numpy as np

from .. import __version__
from ..check import check
from ..model import TwoLayerNet
from .estimates import paper_estimates
from .presets import Preset, SizeSetting
from .training import make_data, train_adam

__all__ = ["train_task", "run_record", "error_record", "RECORD_VERSION"]

RECORD_VERSION = 2  # 2: check_nearby


def _error(exc: BaseException) -> dict:
    return {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}


def train_task(preset: dict, setting: dict, seeds: list, device: str = "cpu", cuda_graph: bool = True) -> dict:
    """Dask task: train ``seeds`` of ``setting`` together; ``{"ok", "weights": {seed: arrays}, "info"}`` or the error."""
    try:
        p, s = Preset.from_dict(preset), SizeSetting(**setting)
        weights, info = train_adam(s, list(seeds), p, device=device, cuda_graph=cuda_graph)
        info["host"] = platform.node()
        return {"ok": True, "weights": dict(zip(seeds, weights)), "info": info}
    except Exception as exc:  # noqa: BLE001 - recorded, the sweep goes on
        return {"ok": False, **_error(exc)}


def error_record(preset: Preset, setting: SizeSetting, seed: int, error: str, tb: str = "") -> dict:
    """The record of a run that failed (``status: "error"``) with its message and traceback."""
    return {"version": RECORD_VERSION, "status": "error", "preset": preset.name, "setting": setting.__dict__,
            "seed": int(seed), "error": error, "traceback": tb}


def _check_summary(res, seconds: float) -> dict:
    """What a record keeps of a :class:`CheckResult`: verdict, order, M/L/K, snap, the first-order residuals.

    ``clarke_rel = max_k |vt_k| / scale_k`` (the min-norm subgradient against the check's scale) and
    ``output_grad_rel``: how far the point is from first-order stationarity, in the check's units.
    """
    st, sn = res.stats, res.snap
    rel = [r / s for r, s in zip(st.bvls_residual, st.bvls_scale) if s > 0]
    return {
        "verdict": res.verdict.value, "reason": res.reason, "message": res.message,
        "descent_order": res.descent.order if res.descent else None,
        "descent_test": res.descent.test if res.descent else None,
        "descent_decrease": res.descent.decrease if res.descent else None,
        "M": st.M, "L": st.L, "K": st.K, "M_k": list(st.M_k),
        "clarke_rel": float(max(rel)) if rel else None,
        "output_grad_rel": st.output_gradient_norm / st.output_gradient_scale if st.output_gradient_scale else 0.0,
        "loss_value": res.loss_value, "seconds": seconds,
        "timings": {k: float(v) for k, v in res.timings.items()}, "solver": st.solver,
        "snap": {"n_pairs": sn.n_pairs, "dZ_norm": sn.dZ_norm, "dW2_norm": sn.dW2_norm, "db2_norm": sn.db2_norm,
                 "loss_before": sn.loss_before, "loss_after": sn.loss_after, "sign_changes": sn.sign_changes,
                 "refit_converged": sn.refit_converged},
    }


def _nearby_summary(nb) -> dict:
    """What a record keeps of nearby mode (:class:`~sospcheck.nearby_mode.NearbyResult`): the verdict at
    ``z*`` and its descent, where ``z*`` is, the Newton steps, the held pairs, or why there is none."""
    res = nb.result
    return {
        "status": nb.status, "success": nb.success, "message": nb.message,
        "verdict": res.verdict.value if res is not None else None, "reason": res.reason if res is not None else None,
        "descent_order": res.descent.order if res is not None and res.descent else None,
        "descent_test": res.descent.test if res is not None and res.descent else None,
        "descent_decrease": res.descent.decrease if res is not None and res.descent else None,
        "M": res.stats.M if res is not None else None, "L": res.stats.L if res is not None else None,
        "K": res.stats.K if res is not None else None,
        "distance": nb.distance, "relative_distance": nb.relative_distance, "rescaled_distance": nb.rescaled_distance,
        "relative_rescaled_distance": nb.relative_rescaled_distance, "loss_change": nb.loss_change,
        "steps": nb.steps, "residual": nb.residual, "held": nb.held, "added": len(nb.added), "zeroed": nb.zeroed,
        "merged": nb.merged, "seconds": nb.seconds,
    }


def run_record(preset: dict, setting: dict, seed: int, trained: dict,
               relaxed_gradient_tol: float | None = 1e-5, nearby: bool = True) -> dict:
    """Dask task: estimates and the full check (with snap) of one trained run; its JSON-ready record.

    ``trained`` is :func:`train_task`'s answer for this seed's group (or the same shape loaded from disk).
    ``relaxed_gradient_tol``: also run the check with ``Tolerances(gradient=...)`` (None: skip), which
    tells what the second-order test says at points that are first-order stationary only to that level.
    ``nearby``: the check runs in nearby mode too (``check(..., snap=True, nearby=True)``; the snap's
    refit is then bounded by ``nearby_radius * |z|``), recorded as ``check_nearby``.
    """
    p, s = Preset.from_dict(preset), SizeSetting(**setting)
    if not trained.get("ok"):
        return error_record(p, s, seed, "training failed: " + trained.get("error", "?"), trained.get("traceback", ""))
    try:
        w = trained["weights"][seed]
        X, Y = make_data(s, seed, p.loss)
        est = paper_estimates(w["W1"], w["b1"], w["W2"], w["b2"], X, Y, loss=p.loss, s_minus=p.s_minus,
                              weight_decay=p.weight_decay)
        net = TwoLayerNet(W1=w["W1"], b1=w["b1"], W2=w["W2"], b2=w["b2"], s_minus=p.s_minus)
        t0 = time.perf_counter()
        res = check(net, X, Y, loss=p.loss, reduction="mean", weight_decay=p.weight_decay, snap=True,
                    fragility=False, nearby=nearby)
        check_seconds = time.perf_counter() - t0 - (res.nearby.seconds if res.nearby is not None else 0.0)
        relaxed = None
        if relaxed_gradient_tol:
            t1 = time.perf_counter()
            rr = check(net, X, Y, loss=p.loss, reduction="mean", weight_decay=p.weight_decay, snap=True,
                       fragility=False, tolerances={"gradient": relaxed_gradient_tol})
            relaxed = _check_summary(rr, time.perf_counter() - t1) | {"gradient_tol": relaxed_gradient_tol}
        info = trained["info"]
        j = list(trained["weights"]).index(seed)
        return {
            "version": RECORD_VERSION, "status": "ok", "preset": p.name, "setting": s.__dict__, "seed": int(seed),
            "loss": p.loss, "s_minus": p.s_minus, "weight_decay": p.weight_decay,
            "train": {k: v for k, v in info.items() if k not in ("objective", "grad_norm")}
            | {"objective": info["objective"][j], "grad_norm": info["grad_norm"][j], "iters_planned": p.iters,
               "lr": p.lr, "decay": p.decay, "decay_every": p.decay_every},
            "estimates": est.to_dict(),
            "check": _check_summary(res, check_seconds),
            "check_relaxed": relaxed,
            "check_nearby": _nearby_summary(res.nearby) if res.nearby is not None else None,
            "versions": {"sospcheck": __version__, "numpy": np.__version__, "python": platform.python_version()},
            "host": platform.node(),
        }
    except Exception as exc:  # noqa: BLE001 - recorded, the sweep goes on
        e = _error(exc)
        return error_record(p, s, seed, e["error"], e["traceback"])
