"""The sweep runner: (setting x seed) runs as Dask tasks, persisted one by one, resumable.

Training tasks take a group of seeds of one setting (``group_size``: 1 on a CPU, a whole setting on a
GPU, where the runs are batched); each seed's estimates and check are a task of their own that
depends on its group's training. The client writes every result as it arrives (:class:`Store`), so
stopping a sweep loses only the tasks in flight, and a rerun does only what is missing. A task that
fails is recorded with its error (``status: "error"``) and retried by the next run of the sweep.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from .presets import Preset, SizeSetting
from .record import error_record, run_record, train_task
from .store import Store

__all__ = ["SweepSummary", "run_sweep", "plan", "parse_seeds"]


@dataclass
class SweepSummary:
    """What one call of :func:`run_sweep` did."""

    total: int
    already_done: int
    ok: int
    failed: int
    trained: int
    seconds: float
    cluster: str


def parse_seeds(text: str | None, default: int) -> list[int]:
    """``None`` -> ``0..default-1``; ``"N"`` -> ``0..N-1``; ``"A-B"`` -> ``A..B``; ``"1,5,7"`` -> those."""
    if text is None:
        return list(range(default))
    try:
        if "," in text:
            seeds = [int(v) for v in text.split(",") if v.strip()]
        elif "-" in text.strip()[1:]:
            a, b = text.split("-", 1)
            seeds = list(range(int(a), int(b) + 1))
        else:
            seeds = list(range(int(text)))
    except ValueError:
        raise ValueError(f"`seeds` must be N, A-B or a,b,c, got {text!r}") from None
    if not seeds or min(seeds) < 0:
        raise ValueError(f"`seeds` must name at least one seed, all >= 0, got {text!r}")
    return sorted(set(seeds))


def plan(store: Store, settings, seeds, group_size: int, recheck: bool = False) -> tuple[list, list, int]:
    """Split the missing runs into training groups and check-only runs (weights already on disk).
    ``recheck``: every run whose weights are on disk is checked again; nothing is trained.

    Returns ``(train_groups, check_only, already_done)`` with ``train_groups`` a list of
    ``(setting, [seeds])`` and ``check_only`` a list of ``(setting, seed, weights, info)``.
    """
    groups, check_only, done = [], [], 0
    for s in settings:
        todo = []
        for seed in seeds:
            loaded = store.load_weights(s, seed) if recheck or not store.is_done(s, seed) else None
            if (store.is_done(s, seed) or recheck) and loaded is None:
                done += 1  # finished, or (recheck) never trained: nothing to do here
                continue
            if loaded is not None:
                check_only.append((s, seed, *loaded))
            else:
                todo.append(seed)
        groups += [(s, todo[i:i + group_size]) for i in range(0, len(todo), group_size)]
    return groups, check_only, done


def default_group_size(device: str, n_seeds: int) -> int:
    """All seeds of a setting in one batch on a GPU, one run per task on a CPU."""
    if device.startswith("cuda"):
        return n_seeds
    if device == "auto":
        try:
            import torch

            return n_seeds if torch.cuda.is_available() else 1
        except ImportError:
            return 1
    return 1


class _Progress:
    """tqdm when installed (and asked for), else one line per finished run."""

    def __init__(self, total: int, desc: str, enabled: bool):
        self.bar, self.n, self.total, self.enabled = None, 0, total, enabled
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc=desc, unit="run", file=sys.stderr, dynamic_ncols=True)
            except ImportError:
                pass

    def update(self, text: str) -> None:
        self.n += 1
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)
            self.bar.update(1)
        elif self.enabled:
            print(f"[{self.n}/{self.total}] {text}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _client(scheduler: str | None, workers: int, threads_per_worker: int, processes: bool):
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError as exc:
        raise RuntimeError("the sweep runner needs Dask: pip install 'dask[distributed]'") from exc
    if scheduler:
        client = Client(scheduler, timeout="30s")
        return client, None, f"existing cluster {scheduler} ({len(client.scheduler_info().get('workers', {}))} workers)"
    cluster = LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker, processes=processes,
                           dashboard_address=":0")
    return Client(cluster), cluster, (f"LocalCluster {workers} worker(s) x {threads_per_worker} thread(s), "
                                      f"{'processes' if processes else 'threads'}")


def run_sweep(preset: Preset, out, seeds: list[int] | None = None, settings=None, scheduler: str | None = None,
              workers: int = 2, threads_per_worker: int = 1, processes: bool = True, device: str = "auto",
              group_size: int | None = None, cuda_graph: bool = True, relaxed_gradient_tol: float | None = 1e-5,
              progress: bool = True, task_timeout: float | None = None, recheck: bool = False,
              log=print) -> SweepSummary:
    """Run every missing (setting, seed) of ``preset`` on Dask and persist each record under ``out``.

    Args:
        preset: what to run. out: the results folder (created; must not hold another preset).
        seeds: which seeds (default ``0..preset.n_seeds-1``). settings: a subset of the preset's.
        scheduler: ``tcp://HOST:PORT`` of a running Dask scheduler; None starts a ``LocalCluster``
            with ``workers`` x ``threads_per_worker`` (``processes``: separate worker processes).
        device: ``auto``, ``cpu`` or ``cuda`` for training (decided on the worker).
        group_size: seeds trained together (default: a whole setting on a GPU, 1 on a CPU).
        relaxed_gradient_tol: also check with this gradient tolerance (None: skip).
        task_timeout: a run still processing on a worker this many seconds after it was first seen
            there is cancelled and recorded as an error (None: no limit). Training tasks have no limit.
        recheck: run the estimates and the check again on every saved run's weights (after an
            upgrade of the check), replacing their records; nothing is trained.
    """
    t0 = time.perf_counter()
    seeds = list(range(preset.n_seeds)) if seeds is None else list(seeds)
    settings = tuple(preset.settings if settings is None else settings)
    group_size = group_size or default_group_size(device, len(seeds))
    _check_arguments(preset, settings, workers, threads_per_worker, group_size)
    store = Store(out)
    store.bind(preset)
    groups, check_only, done = plan(store, settings, seeds, group_size, recheck)
    total = len(settings) * len(seeds)
    todo = total - done
    summary = SweepSummary(total, done, 0, 0, 0, 0.0, "none (nothing to do)")
    if todo == 0:
        log(f"{preset.name}: all {total} runs already done in {store.root}")
        summary.seconds = time.perf_counter() - t0
        return summary
    client, cluster, summary.cluster = _client(scheduler, workers, threads_per_worker, processes)
    log(f"{preset.name}: {todo} of {total} runs to do ({done} already done; {len(groups)} training task(s), "
        f"{len(check_only)} run(s) with saved weights) on {summary.cluster}")
    bar = _Progress(todo, preset.name, progress)
    try:
        kinds = _submit(client, preset, groups, check_only, device, cuda_graph, relaxed_gradient_tol)
        for fut, timed_out in _finished(client, kinds, task_timeout):
            kind, s, what = kinds.pop(fut)
            result = _outcome(client, fut, timed_out, task_timeout, None if kind == "train" else (preset, s, what))
            if kind == "train":
                _save_training(store, s, what, result, summary, log)
                fut.release()
                continue
            store.save_record(s, what, result)
            ok = result.get("status") == "ok"
            summary.ok += ok
            summary.failed += not ok
            bar.update(f"{s.label} seed {what}: "
                       + (result["check"]["verdict"] if ok else "ERROR " + result.get("error", "")[:60]))
    finally:
        bar.close()
        client.close()
        if cluster is not None:
            cluster.close()
    summary.seconds = time.perf_counter() - t0
    log(f"{preset.name}: {summary.ok} ok, {summary.failed} failed, {summary.trained} trained, "
        f"{summary.seconds:.1f} s")
    return summary


def _check_arguments(preset: Preset, settings: tuple, workers: int, threads_per_worker: int, group_size: int) -> None:
    """Refuse settings outside the preset and non-positive worker counts or group sizes."""
    unknown = [s for s in settings if s not in preset.settings]
    if unknown:
        raise ValueError(f"`settings` {[s.label for s in unknown]} are not in preset {preset.name!r}: "
                         f"{[s.label for s in preset.settings]}")
    if workers < 1 or threads_per_worker < 1:
        raise ValueError(f"`workers` and `threads_per_worker` must be >= 1, got {workers}, {threads_per_worker}")
    if group_size < 1:
        raise ValueError(f"`group_size` must be >= 1, got {group_size}")


def _submit(client, preset: Preset, groups: list, check_only: list, device: str, cuda_graph: bool,
            relaxed_gradient_tol: float | None) -> dict:
    """Submit the training groups, a check per seed after its group, and the check-only runs;
    ``{future: (kind, setting, seeds or seed)}``."""
    pd = preset.to_dict()
    kinds = {}
    for s, group in groups:
        tf = client.submit(train_task, pd, s.__dict__, group, device, cuda_graph, pure=False, priority=10,
                           key=f"train-{preset.name}-{s.key}-{group[0]}-{group[-1]}-{time.time_ns()}")
        kinds[tf] = ("train", s, group)
        for seed in group:
            rf = client.submit(run_record, pd, s.__dict__, seed, tf, relaxed_gradient_tol, pure=False,
                               key=f"run-{preset.name}-{s.key}-{seed}-{time.time_ns()}")
            kinds[rf] = ("run", s, seed)
    for s, seed, weights, info in check_only:
        trained = {"ok": True, "weights": {seed: weights}, "info": _as_group_info(info)}
        rf = client.submit(run_record, pd, s.__dict__, seed, trained, relaxed_gradient_tol, pure=False,
                           key=f"run-{preset.name}-{s.key}-{seed}-{time.time_ns()}")
        kinds[rf] = ("run", s, seed)
    return kinds


def _outcome(client, fut, timed_out: bool, task_timeout: float | None, run: tuple | None):
    """A finished future's result; a failed or timed-out task becomes an error record when it is a
    run (``run = (preset, setting, seed)``), None when it is training."""
    try:
        if timed_out:
            client.cancel(fut)
            raise TimeoutError(f"still running after {task_timeout:g} s (cancelled; rerun with a larger "
                               "--task-timeout)")
        return fut.result()
    except Exception as exc:  # noqa: BLE001 - a lost worker or a task killed: record and go on
        return None if run is None else error_record(*run, f"{type(exc).__name__}: {exc}")


def _save_training(store: Store, s: SizeSetting, seeds: list, result: dict | None, summary: SweepSummary, log) -> None:
    """Persist a training group's weights, one file per seed (a failed group is logged)."""
    if result and result.get("ok"):
        summary.trained += len(seeds)
        for j, seed in enumerate(seeds):
            store.save_weights(s, seed, result["weights"][seed], _seed_info(result["info"], j))
    elif result:
        log(f"training {s.label} seeds {seeds[0]}..{seeds[-1]} failed: {result.get('error')}")


def _finished(client, kinds: dict, task_timeout: float | None, poll: float = 2.0):
    """Yield ``(future, timed_out)`` as futures finish, or as runs pass ``task_timeout`` on a worker."""
    from dask.distributed import wait

    pending, seen = set(kinds), {}
    while pending:
        try:
            done = wait(list(pending), timeout=poll, return_when="FIRST_COMPLETED").done
        except TimeoutError:
            done = set()
        for fut in done:
            pending.discard(fut)
            yield fut, False
        if task_timeout is None:
            continue
        now = time.monotonic()
        where = {k: w for w, keys in client.processing().items() for k in keys}
        for fut in list(pending):
            if kinds[fut][0] == "run" and fut.key in where:
                if now - seen.setdefault(fut.key, now) > task_timeout:
                    pending.discard(fut)
                    yield fut, True
                    try:  # a thread cannot be stopped: restart its worker process (fails for thread workers)
                        client.restart_workers([where[fut.key]], timeout=60)
                    except Exception:  # noqa: BLE001 - best effort; the run is already recorded
                        pass


def _seed_info(info: dict, j: int) -> dict:
    """A group's training info cut down to its ``j``-th run."""
    return {k: (v[j] if k in ("objective", "grad_norm") else v) for k, v in info.items()}


def _as_group_info(info: dict) -> dict:
    """A single run's saved training info in the group shape :func:`run_record` reads."""
    return {k: ([v] if k in ("objective", "grad_norm") else v) for k, v in info.items()}
