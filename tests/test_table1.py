"""sospcheck.table1: presets, batched Adam, the paper's estimates, records, store, Dask sweep, report."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sospcheck.table1.aggregate import aggregate, markdown_report, write_report  # noqa: E402
from sospcheck.table1.estimates import paper_estimates  # noqa: E402
from sospcheck.table1.presets import (PAPER_SETTINGS, PAPER_TABLE1, PRESETS, Preset, SizeSetting,  # noqa: E402
                                      get_preset, parse_settings)
from sospcheck.table1.record import run_record, train_task  # noqa: E402
from sospcheck.table1.store import Store  # noqa: E402
from sospcheck.table1.sweep import parse_seeds, plan  # noqa: E402
from sospcheck.table1.training import _Batch, init_weights, make_data, train_adam  # noqa: E402

TINY = Preset(name="tiny", description="test", settings=(SizeSetting(4, 2, 60), SizeSetting(3, 1, 40)), n_seeds=2,
              iters=300, decay_every=100, lr=1e-2)


# ---- presets ---------------------------------------------------------------------------------------

def test_paper_preset_is_the_papers_experiment():
    p = get_preset("paper")
    assert p.settings == PAPER_SETTINGS and len(p.settings) == 7
    assert (p.n_seeds, p.iters, p.decay_every, p.lr, p.decay) == (40, 200_000, 20_000, 1e-3, 0.2)
    assert (p.loss, p.s_minus, p.weight_decay) == ("squared", 0.0, 0.0)
    assert PAPER_TABLE1[SizeSetting(1000, 10, 10000)] == {"runs": 40, "avg_M": 1058.35, "avg_L": 0.925, "avg_K": 0.025,
                                                      "p_L": 0.625}
    assert get_preset("paper-leaky").s_minus == 0.01
    assert get_preset("quick-logistic").loss == "logistic"
    assert get_preset("medium-wd").weight_decay == 1e-4
    assert {"quick", "medium", "paper"} <= set(PRESETS)
    assert Preset.from_dict(p.to_dict()) == p


def test_argument_errors_name_the_argument():
    with pytest.raises(ValueError, match="`preset`"):
        get_preset("nope")
    with pytest.raises(ValueError, match="`settings`"):
        parse_settings("10,1")
    with pytest.raises(ValueError, match="`seeds`"):
        parse_seeds("a-b", 3)
    with pytest.raises(ValueError, match="`loss`"):
        replace(TINY, loss="hinge")
    assert parse_settings("10,1,1000; 100,1,1000") == (SizeSetting(10, 1, 1000), SizeSetting(100, 1, 1000))
    assert parse_seeds(None, 3) == [0, 1, 2] and parse_seeds("4", 9) == [0, 1, 2, 3]
    assert parse_seeds("2-4", 9) == [2, 3, 4] and parse_seeds("7,1", 9) == [1, 7]


# ---- training ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("loss,s_minus,lam", [("squared", 0.0, 0.0), ("logistic", 0.0, 0.0),
                                               ("squared", 0.01, 0.0), ("squared", 0.0, 1e-2)])
def test_hand_written_gradient_matches_autograd(loss, s_minus, lam):
    s = SizeSetting(5, 3, 50)
    X, Y = make_data(s, 0, loss)
    w = init_weights(s, 0)
    P = torch.tensor(np.concatenate([w["W1"].ravel(), w["b1"], w["W2"].ravel(), w["b2"]])[None], dtype=torch.float64)
    run = _Batch(torch, torch.tensor(X[None]), torch.tensor(Y[None]), P.clone(), s.dh, loss, 1.0, s_minus, lam)
    value, G = run.objective_and_grad()
    W1 = torch.tensor(w["W1"], requires_grad=True)
    b1 = torch.tensor(w["b1"], requires_grad=True)
    W2 = torch.tensor(w["W2"], requires_grad=True)
    b2 = torch.tensor(w["b2"], requires_grad=True)
    out = torch.nn.functional.leaky_relu(torch.tensor(X) @ W1.T + b1, s_minus) @ W2.T + b2
    Yt = torch.tensor(Y)
    f = (0.5 * (out - Yt) ** 2).mean() if loss == "squared" else torch.nn.functional.softplus(-Yt * out).mean()
    f = f + 0.5 * lam * sum((p ** 2).sum() for p in (W1, b1, W2, b2))
    f.backward()
    ref = torch.cat([W1.grad.ravel(), b1.grad, W2.grad.ravel(), b2.grad])
    assert float(value[0]) == pytest.approx(f.item(), rel=1e-13)
    assert torch.allclose(G[0], ref, rtol=1e-12, atol=1e-15)


def test_batched_adam_is_torch_adam_per_seed():
    s, p = SizeSetting(4, 2, 30), replace(TINY, iters=50, decay_every=20)
    batched, info = train_adam(s, [3, 5], p, device="cpu")
    assert info["batch"] == 2 and info["iters"] == 50 and len(info["objective"]) == 2
    for seed, got in zip([3, 5], batched):
        X, Y = (torch.tensor(a) for a in make_data(s, seed))
        params = [torch.tensor(v, requires_grad=True) for v in init_weights(s, seed).values()]
        opt = torch.optim.Adam(params, lr=p.lr)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=p.decay_every, gamma=p.decay)
        for _ in range(p.iters):
            opt.zero_grad()
            W1, b1, W2, b2 = params
            loss = (0.5 * (torch.relu(X @ W1.T + b1) @ W2.T + b2 - Y) ** 2).mean()
            loss.backward()
            opt.step()
            sched.step()
        for name, ref in zip(("W1", "b1", "W2", "b2"), params):
            np.testing.assert_allclose(got[name], ref.detach().numpy(), rtol=1e-9, atol=1e-12)


def test_a_run_does_not_depend_on_its_batch():
    s = SizeSetting(4, 2, 30)
    alone, _ = train_adam(s, [1], TINY, device="cpu")
    together, _ = train_adam(s, [0, 1, 2], TINY, device="cpu")
    for k in alone[0]:
        np.testing.assert_allclose(alone[0][k], together[1][k], rtol=1e-10, atol=1e-13)


def test_unusable_device_is_an_error_naming_it():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="`device`"):
        train_adam(SizeSetting(2, 1, 5), [0], TINY, device="cuda")


# ---- the paper's estimates -------------------------------------------------------------------------

def test_paper_estimates_count_kinks_and_flat_pairs():
    # one ReLU neuron z = (1, 0, 0): points with x_1 = 0 sit on its kink
    X = np.array([[0.0, 1.0], [0.0, -1.0], [1.0, 0.5], [2.0, -1.0], [-1.0, 0.3]])
    W1, b1, W2, b2 = np.array([[1.0, 0.0]]), np.array([0.0]), np.array([[1.0]]), np.array([0.0])
    out = np.maximum(X @ W1.T[:, 0], 0)
    # residuals: 0 at point 0 (a K pair), -1 at point 1, exact elsewhere
    Y = out[:, None] + np.array([[0.0], [1.0], [0.0], [0.0], [0.0]])
    est = paper_estimates(W1, b1, W2, b2, X, Y)
    assert est.M == 2 and est.M_k == [2]
    assert est.K == 1                        # |w . r_0| = 0 < 1e-4
    # c = 0 off the kink, so s*_1 = 0 minimises |s a_1 xbar_1| and sits at a bound: one L - K pair
    assert est.L_minus_K == 1 and est.L == 2
    assert est.qp_relative_max < 1e-12
    with pytest.raises(ValueError, match="`X`"):
        paper_estimates(W1, b1, W2, b2, X[:, :1], Y)


# ---- one run's record --------------------------------------------------------------------------------

def test_run_record_has_estimates_check_and_seeds():
    s = TINY.settings[1]
    trained = train_task(TINY.to_dict(), s.__dict__, [0, 1], "cpu")
    assert trained["ok"], trained.get("error")
    rec = run_record(TINY.to_dict(), s.__dict__, 1, trained)
    assert rec["status"] == "ok" and rec["seed"] == 1 and rec["setting"] == {"dx": 3, "dh": 1, "m": 40}
    assert rec["check"]["verdict"] in ("local_minimum", "sosp", "descent", "inconclusive")
    assert {"M", "L", "K", "snap", "seconds", "loss_value", "descent_order"} <= set(rec["check"])
    assert {"M", "L", "K", "qp_relative_max"} <= set(rec["estimates"])
    assert rec["check_relaxed"]["gradient_tol"] == 1e-5
    assert rec["train"]["iters"] == TINY.iters and rec["train"]["device"] == "cpu"
    json.dumps(rec)  # JSON-ready
    bad = run_record(TINY.to_dict(), s.__dict__, 0, {"ok": False, "error": "boom"})
    assert bad["status"] == "error" and "boom" in bad["error"]


# ---- store and resume --------------------------------------------------------------------------------

def test_store_plans_only_missing_runs_and_refuses_another_preset(tmp_path):
    st = Store(tmp_path)
    st.bind(TINY)
    s0, s1 = TINY.settings
    st.save_record(s0, 0, {"status": "ok", "setting": s0.__dict__, "seed": 0})
    st.save_record(s0, 1, {"status": "error", "setting": s0.__dict__, "seed": 1, "error": "x"})
    w = {k: np.zeros((1, 1)) for k in ("W1", "b1", "W2", "b2")}
    st.save_weights(s1, 1, w, {"objective": 0.0, "grad_norm": 0.0})
    groups, check_only, done = plan(st, TINY.settings, [0, 1], group_size=2)
    assert done == 1
    assert groups == [(s0, [1]), (s1, [0])]              # the failed run is retried
    assert [(c[0], c[1]) for c in check_only] == [(s1, 1)]  # trained, not checked: no retraining
    st.save_weights(s0, 0, w, {"objective": 0.0, "grad_norm": 0.0})
    groups, check_only, done = plan(st, TINY.settings, [0, 1], group_size=2, recheck=True)
    assert groups == [] and done == 2  # recheck trains nothing
    assert [(c[0], c[1]) for c in check_only] == [(s0, 0), (s1, 1)]
    with pytest.raises(ValueError, match="`out`"):
        st.bind(replace(TINY, iters=7))


# ---- the sweep on a real Dask LocalCluster -------------------------------------------------------------

def test_sweep_on_local_cluster_persists_resumes_and_records_failures(tmp_path):
    pytest.importorskip("distributed")
    from sospcheck.table1.sweep import run_sweep

    logs = []
    first = run_sweep(TINY, tmp_path / "a", seeds=[0], workers=2, processes=True, device="cpu", progress=False,
                      log=logs.append)
    assert (first.total, first.ok, first.failed, first.trained) == (2, 2, 0, 2)
    assert "LocalCluster 2 worker(s)" in first.cluster
    # a larger seed range later: only the new seeds run
    second = run_sweep(TINY, tmp_path / "a", seeds=[0, 1], workers=1, processes=False, device="cpu",
                       progress=False, log=logs.append)
    assert (second.already_done, second.ok, second.trained) == (2, 2, 2)
    third = run_sweep(TINY, tmp_path / "a", seeds=[0, 1], progress=False, log=logs.append)
    assert third.already_done == 4 and third.ok == 0
    recs = Store(tmp_path / "a").records()
    assert len(recs) == 4 and all(r["status"] == "ok" for r in recs)
    # training that fails (no GPU here) is recorded per run and does not stop the sweep
    if not torch.cuda.is_available():
        failed = run_sweep(TINY, tmp_path / "b", seeds=[0, 1], workers=1, processes=False, device="cuda",
                           progress=False, log=logs.append)
        assert (failed.ok, failed.failed) == (0, 4)
        errs = Store(tmp_path / "b").records()
        assert all(r["status"] == "error" and "`device`" in r["error"] for r in errs)
        md = write_report(Store(tmp_path / "b"))["markdown"]
        assert "Failed runs" in md


# ---- report ------------------------------------------------------------------------------------------

def _fake(setting, seed, M, L, K, verdict="local_minimum"):
    part = {"M": M, "L": L, "K": K}
    check = part | {"verdict": verdict, "descent_order": 1 if verdict == "descent" else None, "seconds": 0.1,
                    "clarke_rel": 1e-9, "snap": {"dZ_norm": 1e-9, "loss_before": 0.5}}
    return {"status": "ok", "setting": setting.__dict__, "seed": seed, "estimates": part, "check": check,
            "check_relaxed": dict(check), "train": {"seconds_per_iter": 1e-4}}


def test_aggregate_in_the_papers_format_beside_the_paper():
    p = replace(get_preset("paper"), settings=PAPER_SETTINGS[:2])
    s0, s1 = PAPER_SETTINGS[:2]
    recs = [_fake(s0, 0, 6, 0, 0), _fake(s0, 1, 8, 1, 1, "descent"), _fake(s1, 0, 9, 0, 0, "sosp"),
            {"status": "error", "setting": s1.__dict__, "seed": 1, "error": "boom"}]
    rows = aggregate(recs, p)
    assert rows[0]["runs"] == 2 and rows[0]["est"]["sum_M"] == 14 and rows[0]["est"]["avg_M"] == 7
    assert rows[0]["check"]["p_L"] == 0.5 and rows[0]["verdicts"] == {"local_minimum": 1, "descent1": 1}
    assert rows[1]["errors"] == 1
    md = markdown_report(rows, p)
    assert "| (10, 1, 1000) | 2 | 290 (7.25) | 14 (7) | 14 (7) |" in md
    assert "Sum M (Avg)" in md and "P{L>0}" in md and "boom" in md


# ---- the CLI, as the README runs it ------------------------------------------------------------------

@pytest.mark.slow  # the quick preset end to end: minutes; `-m "not slow"` skips it, CI runs it
def test_quick_preset_from_the_command_line(tmp_path):
    pytest.importorskip("distributed")
    out = tmp_path / "quick"
    proc = subprocess.run([sys.executable, "-m", "sospcheck.table1", "table1", "--preset", "quick", "--out",
                           str(out), "--no-progress"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| (10, 1, 1000) | 4 | 290 (7.25) |" in proc.stdout
    assert "on LocalCluster 2 worker(s)" in proc.stderr
    for f in ("table1.md", "table1.csv", "runs.csv", "preset.json"):
        assert (out / f).exists(), f
    assert len(list((out / "runs").glob("*/seed*.json"))) == 8
    again = subprocess.run([sys.executable, "-m", "sospcheck.table1", "table1", "--preset", "quick", "--out",
                            str(out), "--no-progress"], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "all 8 runs already done" in again.stderr
    bad = subprocess.run([sys.executable, "-m", "sospcheck.table1", "table1", "--preset", "quick", "--out",
                          str(out), "--seeds", "x-y"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "`seeds`" in bad.stderr


def test_unwritable_out_folder_is_refused_before_training(tmp_path, capsys):
    from sospcheck.table1.cli import main

    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert main(["experiment", "table1", "--preset", "quick", "--out", str(blocker)]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "not a folder" in err
    assert main(["experiment", "table1", "--preset", "quick", "--out", str(blocker / "inside")]) == 2
    assert "--out" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]
