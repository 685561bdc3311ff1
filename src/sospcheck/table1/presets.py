"""Experiment presets: the paper's Table 1 (Yun, Sra & Jadbabaie 2019, section 4), scaled versions, extensions.

A run trains ``Y(x) = W2 h(W1 x + b1) + b2`` (dy = 1) on ``x_i, y_i ~ N(0, 1)`` i.i.d. by full-batch
Adam with step ``lr * decay^floor(t / decay_every)``, then counts kink pairs and checks the point.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

__all__ = ["SizeSetting", "Preset", "PRESETS", "PAPER_TABLE1", "PAPER_SETTINGS", "get_preset", "parse_settings"]


@dataclass(frozen=True, order=True)
class SizeSetting:
    """One (dx, dh, m) of Table 1: input dimension, hidden width, number of data points.

    A preset's ``settings`` are these; records store one as ``"setting": {"dx", "dh", "m"}``.
    """

    dx: int
    dh: int
    m: int

    @property
    def key(self) -> str:
        return f"dx{self.dx}_dh{self.dh}_m{self.m}"

    @property
    def label(self) -> str:
        return f"({self.dx}, {self.dh}, {self.m})"


PAPER_SETTINGS = tuple(SizeSetting(*s) for s in (
    (10, 1, 1000), (10, 1, 10000), (100, 1, 1000), (100, 1, 10000), (100, 10, 10000), (1000, 1, 10000),
    (1000, 10, 10000)))

#: Table 1 of the paper: per-run averages over 40 runs (the sums are 40x these).
PAPER_TABLE1 = {
    s: {"runs": 40, "avg_M": M, "avg_L": L, "avg_K": K, "p_L": p}
    for s, (M, L, K, p) in zip(PAPER_SETTINGS, (
        (7.25, 0.0, 0.0, 0.0), (9.275, 0.025, 0.0, 0.025), (36.3, 0.0, 0.0, 0.0), (74.4, 0.05, 0.0, 0.05),
        (620.125, 0.1, 0.0, 0.1), (354.85, 0.0, 0.0, 0.0), (1058.35, 0.925, 0.025, 0.625)))
}


@dataclass(frozen=True)
class Preset:
    """Everything a sweep needs besides the seeds' values: settings, schedule, loss, activation, decay.

    Training minimises ``(1/m) sum_i l(Y(x_i), y_i) + (weight_decay/2) |z|^2`` with Adam
    (betas 0.9, 0.999, eps 1e-8), step ``lr * decay^floor(t / decay_every)`` for ``iters`` steps.
    """

    name: str
    description: str
    settings: tuple
    n_seeds: int
    iters: int
    decay_every: int
    lr: float = 1e-3
    decay: float = 0.2
    loss: str = "squared"
    s_minus: float = 0.0
    weight_decay: float = 0.0

    def __post_init__(self):
        if self.iters <= 0 or self.decay_every <= 0:
            raise ValueError(f"`iters` and `decay_every` must be positive, got {self.iters}, {self.decay_every}")
        if self.loss not in ("squared", "logistic"):
            raise ValueError(f"`loss` must be 'squared' or 'logistic', got {self.loss!r}")
        if self.n_seeds <= 0:
            raise ValueError(f"`n_seeds` must be positive, got {self.n_seeds}")

    @property
    def variant(self) -> str:
        """Which extension this is: relu, leaky, logistic or weight_decay."""
        if self.s_minus:
            return "leaky"
        if self.loss == "logistic":
            return "logistic"
        if self.weight_decay:
            return "weight_decay"
        return "relu"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["settings"] = [asdict(s) for s in self.settings]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preset":
        d = dict(d)
        d["settings"] = tuple(SizeSetting(**s) for s in d["settings"])
        return cls(**d)


_BASES = {
    "quick": dict(
        description="scaled down for CI: the paper's two m = 1000 settings, 4 seeds, 20,000 Adam steps decayed "
                    "0.2x every 2,000 (the paper's schedule compressed 10x)",
        settings=(SizeSetting(10, 1, 1000), SizeSetting(100, 1, 1000)), n_seeds=4, iters=20_000, decay_every=2_000),
    "medium": dict(
        description="the paper's four dh = 1, dx <= 100 settings, 8 seeds, the full 200,000-step schedule "
                    "(CPU-affordable)",
        settings=PAPER_SETTINGS[:4], n_seeds=8, iters=200_000, decay_every=20_000),
    "paper": dict(
        description="Table 1 as in the paper: seven settings, 40 seeds, 200,000 Adam steps decayed 0.2x every "
                    "20,000",
        settings=PAPER_SETTINGS, n_seeds=40, iters=200_000, decay_every=20_000),
}
_VARIANTS = {
    "": {},
    "-leaky": dict(s_minus=0.01),
    "-logistic": dict(loss="logistic"),
    "-wd": dict(weight_decay=1e-4),
}
_VARIANT_TEXT = {"": "", "-leaky": "; leaky ReLU (s_minus = 0.01)",
                 "-logistic": "; logistic loss on labels sign(y)", "-wd": "; weight decay 1e-4"}

PRESETS = {
    base + v: Preset(name=base + v, **{**kw, "description": kw["description"] + _VARIANT_TEXT[v]}, **_VARIANTS[v])
    for base, kw in _BASES.items() for v in _VARIANTS
}


def get_preset(name: str) -> Preset:
    """The preset called ``name`` (one of :data:`PRESETS`)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"`preset` must be one of {sorted(PRESETS)}, got {name!r}") from None


def parse_settings(text: str) -> tuple:
    """``"10,1,1000;100,1,1000"`` -> ``(SizeSetting(10, 1, 1000), SizeSetting(100, 1, 1000))``."""
    out = []
    for part in filter(None, (p.strip() for p in text.replace(" ", "").split(";"))):
        try:
            dx, dh, m = (int(v) for v in part.split(","))
        except ValueError:
            raise ValueError(f"`settings` must be 'dx,dh,m;dx,dh,m;...', got {text!r}") from None
        if min(dx, dh, m) <= 0:
            raise ValueError(f"`settings` entries must be positive, got {part!r}")
        out.append(SizeSetting(dx, dh, m))
    if not out:
        raise ValueError(f"`settings` names no setting: {text!r}")
    return tuple(out)


def with_overrides(preset: Preset, **kw) -> Preset:
    """``preset`` with some fields replaced (None values are ignored); the name records the change."""
    kw = {k: v for k, v in kw.items() if v is not None}
    return replace(preset, **kw) if kw else preset
