"""Where the resident memory of one check goes, by mapping (not part of ``run.py``):

    .venv/bin/python benchmarks/memory_breakdown.py [--case b] [--m 10000] [--solver auto] [--arrays] [--phases]
        [--resident]
        [--mnist M] [--cache DIR]

A planted minimum of ``benign.py``'s case (same cache), in this fresh interpreter: the resident set of
each kind of mapping (``/proc/self/smaps``: the heap, anonymous maps, each shared library) is read
before the check and at the moment the dense solver has factorised its reduced ``H`` (its peak), or at
the end on the matrix-free path, and the growth is printed in MiB and as a multiple of the bytes of X.
With ``--arrays`` what the NumPy arrays alive at that moment hold is printed too (``tracemalloc``, whose
own bookkeeping then adds to the heap). Large anonymous maps
are single arrays (``H``) or the BLAS libraries' work buffers; the libraries' own pages and those
buffers do not grow with the data. With ``--phases`` (tracemalloc) each phase of the check prints the
bytes alive when it starts and its peak inside, as multiples of the bytes of X. With ``--resident`` the
resident set and its peak (``VmHWM``) are printed around the formation of the dense ``H`` and each
factorisation, over the bytes of X, from the resident set before the data (taken as the resident set
after loading it, less its bytes). ``--mnist M`` takes
instead the MNIST-shape point of ``mnist_check.py`` (M x 784 inputs, dh = 1000, dy = 10, a random
point with the output layer refit: a descent). Linux only.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import tracemalloc
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import importlib  # noqa: E402

import common  # noqa: E402  (first: it pins the BLAS threads before NumPy loads)
from benign import CASES  # noqa: E402
from sospcheck import check  # noqa: E402
from sospcheck import dense_subspace  # noqa: E402
from sospcheck.snap import refit_output_layer  # noqa: E402

_PHASES = ("validate_with_forward", "forward_and_boundary", "first_order", "second_order_test", "verify")


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


def trace_dense_resident(X_bytes: int, base: int) -> None:
    """Print the resident set (and its peak since the previous mark, ``VmHWM`` reset through
    ``/proc/self/clear_refs``) over ``X_bytes`` around the dense path's formation of ``H`` and each
    factorisation, ``base`` being the resident set before the data."""
    def mark(name):
        rss, peak = _status_bytes("VmRSS"), _status_bytes("VmHWM")
        print(f"  {name}: resident {(rss - base) / X_bytes:.2f}x, peak since the previous mark {(peak - base) / X_bytes:.2f}x")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

    def around(owner, name, label):
        f = getattr(owner, name)

        def wrapped(*a, **k):
            mark(f"before {label}")
            out = f(*a, **k)
            mark(f"after {label}")
            return out
        setattr(owner, name, wrapped)

    mark("start")
    around(importlib.import_module("sospcheck.operators"), "_gram_hessian", "forming H")
    around(dense_subspace.DenseSubspace, "_factor", "a factorisation")


def trace_phases(X_bytes: int) -> None:
    """Wrap the check's phase functions so that each prints what is alive when it starts and its peak."""
    module = importlib.import_module("sospcheck.check")
    for name in _PHASES:
        def traced(*a, _f=getattr(module, name), _name=name, **k):
            tracemalloc.reset_peak()
            alive = tracemalloc.get_traced_memory()[0]
            out = _f(*a, **k)
            peak = tracemalloc.get_traced_memory()[1]
            print(f"  phase {_name}: {alive / X_bytes:.2f}x alive at its start, peak {peak / X_bytes:.2f}x")
            return out
        setattr(module, name, traced)


def mnist_instance(m: int) -> dict:
    X, Y = common.gaussian_data(m, 784, 10, 0)
    net, _ = refit_output_layer(common.random_net(784, 1000, 10, seed=0), X, Y, common.SQUARED, 1.0, 0.0)
    return {"net": net, "X": X, "Y": Y}


def resident_by_mapping() -> dict[str, int]:
    """Resident bytes per mapping: ``[heap]``, each file by name, anonymous maps by address."""
    out: dict[str, int] = defaultdict(int)
    name = None
    with open("/proc/self/smaps") as f:
        for line in f:
            parts = line.split()
            if "-" in parts[0] and not parts[0].endswith(":"):
                name = parts[5].rsplit("/", 1)[-1] if len(parts) > 5 else f"anonymous {parts[0]}"
            elif parts[0] == "Rss:":
                out[name] += int(parts[1]) * 1024
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", default="b", choices=sorted(CASES))
    ap.add_argument("--m", type=int, default=None, help="points (default: the case's)")
    ap.add_argument("--solver", default="auto")
    ap.add_argument("--arrays", action="store_true", help="also the bytes of the arrays alive (tracemalloc)")
    ap.add_argument("--phases", action="store_true", help="tracemalloc per phase of the check")
    ap.add_argument("--resident", action="store_true",
                    help="the resident set and its peak around the dense path's formation of H and factorisations")
    ap.add_argument("--mnist", type=int, default=None, help="M: the MNIST-shape point with M rows instead")
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "sospcheck-benign"))
    args = ap.parse_args(argv)
    spec = {**CASES[args.case], **({"m": args.m} if args.m else {})}
    if args.mnist:
        spec = {"mnist": args.mnist}
    inst = mnist_instance(args.mnist) if args.mnist else common.planted_minimum(**spec, cache=args.cache)
    X = inst["X"]
    before, snaps = resident_by_mapping(), []
    if args.resident:
        trace_dense_resident(X.nbytes, _status_bytes("VmRSS") - X.nbytes - inst["Y"].nbytes)
    factor = dense_subspace.DenseSubspace._factor

    def snapshot():
        snaps.append((resident_by_mapping(), tracemalloc.get_traced_memory()[0] if args.arrays else None))

    def observed(self, shift):  # the dense path's peak: H factorised, everything else still alive
        ok = factor(self, shift)
        if not snaps:
            snapshot()
        return ok

    dense_subspace.DenseSubspace._factor = observed
    if args.arrays or args.phases:
        tracemalloc.start()
    if args.phases:
        trace_phases(X.nbytes)
    res = check(inst["net"], X, inst["Y"], solver=args.solver)
    if not snaps:
        snapshot()
    after, arrays = snaps[0]
    mib = 2.0**20
    print(f"case {'mnist' if args.mnist else args.case} {spec}: {res.verdict.value} ({res.stats.solver}); X {X.nbytes / mib:.1f} MiB; "
          f"at {'the first factorisation' if res.stats.solver == 'dense' else 'the end'}:")
    growth = {k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before)}
    shown = 0
    for k, g in sorted(growth.items(), key=lambda kv: -kv[1]):
        if g >= 64 * 1024:
            print(f"  {g / mib:7.2f} MiB  {g / X.nbytes:5.2f}x  {k}")
            shown += g
    total = sum(growth.values())
    print(f"  {total / mib:7.2f} MiB  {total / X.nbytes:5.2f}x  resident growth in all ({(total - shown) / mib:.2f} MiB "
          "in smaller pieces)")
    if arrays is not None:
        print(f"  NumPy and Python allocations alive (tracemalloc): {arrays / mib:.2f} MiB ({arrays / X.nbytes:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
