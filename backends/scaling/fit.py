"""Scaling-law fitting over a sweep of trained models: parameter and FLOP counts of a
decoder, Chinchilla's approach 3 (the parametric loss L(N, D) = E + A/N^alpha + B/D^beta
fitted with a Huber loss), approach 2 (isoFLOP parabolas and power laws through their
minima), compute-optimal (N, D) from either, and a plot of a sweep against both fits.

References: Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models"
(arXiv:2203.15556), section 3 and appendix D.2; Kaplan et al. 2020, "Scaling Laws for
Neural Language Models" (arXiv:2001.08361), table 1; Besiroglu et al. 2024, "Chinchilla
Scaling: A replication attempt" (arXiv:2404.10102).

Only numpy is imported at module level; scipy and matplotlib are imported inside the
functions that need them, so importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import numbers
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

# ---------------------------------------------------------------- parameters and FLOPs


def flops_per_token(non_embedding_params: float, layers: int, hidden: int, seq_len: int) -> float:
    """Training FLOPs per token, Kaplan et al. 2020 (table 1) times 3 for forward+backward:

        C_token = 6 * N + 6 * n_layer * n_ctx * d_attn

    The forward pass costs 2 N (a multiply-add per weight) plus 2 n_layer n_ctx d_attn for
    QK^T and the attention-weighted sum of V (d_attn = hidden; no causal halving); the
    backward pass costs twice the forward. Embedding lookups are not counted.
    """
    _require_positive(
        non_embedding_params=non_embedding_params, layers=layers, hidden=hidden, seq_len=seq_len
    )
    return 6.0 * non_embedding_params + 6.0 * layers * seq_len * hidden


def training_flops(
    non_embedding_params: float, layers: int, hidden: int, seq_len: int, tokens: float
) -> float:
    """Training compute C of `tokens` tokens: `flops_per_token(...) * tokens`."""
    _require_positive(tokens=tokens)
    return flops_per_token(non_embedding_params, layers, hidden, seq_len) * tokens


def _require_positive(**values: float) -> None:
    for name, value in values.items():
        if not (isinstance(value, numbers.Real) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive finite number (got {value!r})")


# ---------------------------------------------------------------- approach 3

# Appendix D.2's grid of L-BFGS initial points, for theta = (e, a, b, alpha, beta) with
# E = exp(e), A = exp(a), B = exp(b): 5 * 6 * 6 * 5 * 5 = 4500 points.
PAPER_GRID: dict[str, tuple[float, ...]] = {
    "e": (-1.0, -0.5, 0.0, 0.5, 1.0),
    "a": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "b": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "alpha": (0.0, 0.5, 1.0, 1.5, 2.0),
    "beta": (0.0, 0.5, 1.0, 1.5, 2.0),
}
PARAMETERS = ("E", "A", "B", "alpha", "beta")
# A bootstrap refit starts from the full-data optimum and this many screened grid points:
# resampled data move the optimum a little, rarely into another basin.
_BOOTSTRAP_GRID_STARTS = 4


@dataclass(frozen=True)
class Approach3Fit:
    """L(N, D) = E + A / N^alpha + B / D^beta, fitted to a sweep's final losses."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    loss: float
    """The Huber loss of log L summed over the points, at the optimum."""
    n_points: int
    intervals: dict[str, tuple[float, float]] | None = None
    """Bootstrap (5th, 95th) percentiles per name of `PARAMETERS`; None without bootstrap."""

    def predict(self, N: ArrayLike, D: ArrayLike) -> np.ndarray:
        """Predicted loss of N parameters trained on D tokens."""
        N, D = np.asarray(N, dtype=float), np.asarray(D, dtype=float)
        return self.E + self.A / N**self.alpha + self.B / D**self.beta


def fit_approach3(
    N: ArrayLike,
    D: ArrayLike,
    L: ArrayLike,
    *,
    huber_delta: float = 1e-3,
    bootstrap: int = 0,
    seed: int = 0,
    starts: int | None = 64,
) -> Approach3Fit:
    """Fit L(N, D) = E + A/N^alpha + B/D^beta as Hoffmann et al. 2022 (appendix D.2) do:
    minimise sum_i Huber_delta(LSE(a - alpha log N_i, b - beta log D_i, e) - log L_i) with
    L-BFGS from a grid of initial points (`PAPER_GRID`) and keep the best optimum.

    `starts` is how many grid points are run: the grid's objective is evaluated everywhere
    (one vectorised pass) and the `starts` lowest are optimised; None runs all 4500, as the
    paper does. With `bootstrap` > 0, the points are resampled with replacement that many
    times (numpy generator seeded with `seed`) and refitted for percentile intervals.
    """
    logn, logd, logl = _log_points(N=N, D=D, L=L)
    if len(logn) < len(PARAMETERS):
        raise ValueError(
            f"approach 3 fits {len(PARAMETERS)} parameters: it needs at least "
            f"{len(PARAMETERS)} points (got {len(logn)})"
        )
    _require_positive(huber_delta=huber_delta)
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, int) or bootstrap < 0:
        raise ValueError(f"bootstrap must be a non-negative integer (got {bootstrap!r})")
    if starts is not None and (not isinstance(starts, int) or starts < 1):
        raise ValueError(f"starts must be a positive integer or None (got {starts!r})")
    # Before the BLAS limit: it applies to the libraries loaded when it is entered, and
    # scipy brings its own OpenBLAS.
    import scipy.optimize  # noqa: F401

    grid = np.array(list(itertools.product(*PAPER_GRID.values())))
    data = (logn, logd, logl)
    with _single_threaded_blas():
        theta, loss = _best_of(_screen(grid, data, huber_delta, starts), data, huber_delta)
        intervals = None
        if bootstrap:
            rng = np.random.default_rng(seed)
            samples = np.empty((bootstrap, len(PARAMETERS)))
            for i in range(bootstrap):
                pick = rng.integers(0, len(logn), len(logn))
                resampled = (logn[pick], logd[pick], logl[pick])
                x0 = _screen(grid, resampled, huber_delta, _BOOTSTRAP_GRID_STARTS)
                refit, _ = _best_of(np.vstack([theta, x0]), resampled, huber_delta)
                samples[i] = _natural(refit)
            low, high = np.percentile(samples, [5, 95], axis=0)
            intervals = {
                name: (float(lo), float(hi)) for name, lo, hi in zip(PARAMETERS, low, high)
            }
    E, A, B, alpha, beta = _natural(theta)
    return Approach3Fit(E, A, B, alpha, beta, loss, len(logn), intervals)


def unfittable(N: ArrayLike, D: ArrayLike) -> str | None:
    """Why approach 3 cannot be fitted to points whose N or D never varies (that term
    cannot be told from E: any exponent fits them equally), or None."""
    for what, values, how in (
        ("N (non-embedding parameters)", N, "vary the sizes (an architecture axis)"),
        ("D (training tokens)", D, "vary the steps (an axis) or give budgets"),
    ):
        if len(set(np.asarray(values, dtype=float).tolist())) == 1:
            first = float(np.asarray(values, dtype=float).flat[0])
            return (
                f"every point has {what} = {first:.4g}: its term cannot be told from E, "
                f"so any exponent fits; {how}"
            )
    return None


def optimum_problem(fit: Approach3Fit) -> str | None:
    """Why the fitted law has no compute optimum (an exponent not above 0), or None."""
    if fit.alpha > 0 and fit.beta > 0:
        return None
    why = []
    if not (fit.alpha > 0):
        why.append(
            "with alpha <= 0 the loss does not fall as N grows over the points swept (the "
            "larger models did no better for the tokens they saw): sweep sizes further "
            "apart, or train long enough for the larger ones to pull ahead"
        )
    if not (fit.beta > 0):
        why.append(
            "with beta <= 0 it does not fall as D grows: sweep budgets (or steps) further "
            "apart, on data that is not repeated"
        )
    if math.isnan(fit.alpha) or math.isnan(fit.beta):
        why = ["the fit did not converge: sweep sizes and budgets further apart"]
    return (
        f"no compute optimum: the fit's alpha = {fit.alpha:.3g} and beta = {fit.beta:.3g} "
        f"must both be > 0; {'; '.join(why)}"
    )


def tiny_optimum(params: float, tokens: float) -> str | None:
    """Why an optimum is none at all, where the law gives less than one parameter or one
    token (a budget far below the sweep's); None for a real one."""
    below = " and ".join(
        f"{what} = {value:.3g} {unit}"
        for what, value, unit in (("N", params, "parameters"), ("D", tokens, "tokens"))
        if value < 1
    )
    if not below:
        return None
    return (
        f"no optimum at this budget: the law gives {below}, less than one; the budget is "
        "far below the compute the sweep measured"
    )


def points_flops_per_token(params: ArrayLike, per_token: ArrayLike) -> Callable[[float], float]:
    """FLOPs per token of a model of N non-embedding parameters as the sweep's points count
    them: 6N plus attention, whose part (which grows more slowly than N) is a power law
    through the points' own; their one ratio to N when they are of one size."""
    n, f = (np.asarray(v, dtype=float) for v in (params, per_token))
    extra = f - 6 * n
    if len(np.unique(n)) < 2 or not (extra > 0).all():
        ratio = float(np.median(f / n))
        return lambda size: ratio * size
    slope, offset = np.polyfit(np.log(n), np.log(extra), 1)
    return lambda size: float(6 * size + math.exp(offset) * size**slope)


def compute_optimal_approach3(
    fit: Approach3Fit,
    budget_flops: float,
    flops_per_token_fn: Callable[[float], float] | None = None,
) -> tuple[float, float]:
    """(N_opt, D_opt) minimising the fitted loss at a compute budget C.

    With C = 6 N D (no `flops_per_token_fn`), in closed form (Hoffmann et al. eq. 4):
    N_opt = G (C/6)^(beta/(alpha+beta)), D_opt = G^-1 (C/6)^(alpha/(alpha+beta)),
    G = (alpha A / (beta B))^(1/(alpha+beta)). With `flops_per_token_fn(N)` the budget is
    C = fn(N) * D, and L(N, C / fn(N)) is minimised numerically over log N.
    """
    _require_positive(budget_flops=budget_flops)
    alpha, beta = fit.alpha, fit.beta
    if alpha <= 0 or beta <= 0:
        raise ValueError(f"a compute optimum needs alpha, beta > 0 (got {alpha}, {beta})")
    g = (alpha * fit.A / (beta * fit.B)) ** (1 / (alpha + beta))
    n_opt = g * (budget_flops / 6) ** (beta / (alpha + beta))
    d_opt = (budget_flops / 6) ** (alpha / (alpha + beta)) / g
    if flops_per_token_fn is None:
        return float(n_opt), float(d_opt)
    from scipy.optimize import minimize_scalar

    def tokens(n: float) -> float:
        per_token = float(flops_per_token_fn(n))
        if not (math.isfinite(per_token) and per_token > 0):
            raise ValueError(f"flops_per_token_fn({n:.4g}) = {per_token!r}: must be > 0")
        return budget_flops / per_token

    # Four decades either side of the 6ND optimum: exact FLOP counts move it far less.
    lo, hi = math.log(n_opt) - 4 * math.log(10), math.log(n_opt) + 4 * math.log(10)
    res = minimize_scalar(
        lambda x: float(fit.predict(math.exp(x), tokens(math.exp(x)))),
        bounds=(lo, hi),
        method="bounded",
        options={"xatol": 1e-9},
    )
    if min(res.x - lo, hi - res.x) < 1e-3:
        raise ValueError("no compute optimum within 1e4x of the 6ND one; check flops_per_token_fn")
    return math.exp(res.x), tokens(math.exp(res.x))


def _log_points(**columns: ArrayLike) -> tuple[np.ndarray, ...]:
    """Logs of equally long 1-D columns of positive finite numbers."""
    arrays = {name: np.asarray(values, dtype=float) for name, values in columns.items()}
    lengths = set()
    for name, arr in arrays.items():
        if arr.ndim != 1:
            raise ValueError(f"{name} must be one-dimensional (got shape {arr.shape})")
        if not np.all(np.isfinite(arr)):
            raise ValueError(
                f"{name} has NaN or infinite values at {np.flatnonzero(~np.isfinite(arr))}"
            )
        if np.any(arr <= 0):
            raise ValueError(
                f"{name} must be positive (non-positive at {np.flatnonzero(arr <= 0)})"
            )
        lengths.add(arr.size)
    if len(lengths) > 1:
        raise ValueError(f"{', '.join(arrays)} must have the same length (got {sorted(lengths)})")
    return tuple(np.log(arr) for arr in arrays.values())


def _natural(theta: np.ndarray) -> tuple[float, ...]:
    e, a, b, alpha, beta = theta
    # A refit on a degenerate resample (few distinct points) may run a coefficient off to
    # exp(huge): it is inf then, and only widens the interval.
    with np.errstate(over="ignore"):
        E, A, B = np.exp([e, a, b])
    return float(E), float(A), float(B), float(alpha), float(beta)


def _huber(r: np.ndarray, delta: float) -> np.ndarray:
    small = np.abs(r) <= delta
    return np.where(small, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta))


def _objective(theta: np.ndarray, data: tuple[np.ndarray, ...], delta: float):
    """The Huber objective and its gradient in theta = (e, a, b, alpha, beta)."""
    logn, logd, logl = data
    e, a, b, alpha, beta = theta
    terms = np.stack([a - alpha * logn, b - beta * logd, np.full_like(logn, e)])
    top = terms.max(axis=0)
    weights = np.exp(terms - top)
    total = weights.sum(axis=0)
    weights /= total  # softmax: d LSE / d term
    r = top + np.log(total) - logl
    dr = np.where(np.abs(r) <= delta, r, delta * np.sign(r))
    grad = np.array(
        [
            dr @ weights[2],
            dr @ weights[0],
            dr @ weights[1],
            -(dr * weights[0]) @ logn,
            -(dr * weights[1]) @ logd,
        ]
    )
    return float(_huber(r, delta).sum()), grad


def _screen(
    grid: np.ndarray, data: tuple[np.ndarray, ...], delta: float, starts: int | None
) -> np.ndarray:
    """The `starts` grid points of lowest objective (all of them for None)."""
    if starts is None or starts >= len(grid):
        return grid
    logn, logd, logl = data
    losses = np.empty(len(grid))
    chunk = max(1, 2**20 // len(logn))  # bounds the (3, chunk, n) array to ~25 MB
    for i in range(0, len(grid), chunk):
        e, a, b, alpha, beta = grid[i : i + chunk, :, None].transpose(1, 0, 2)
        from_n, from_d = a - alpha * logn, b - beta * logd
        terms = np.stack([from_n, from_d, np.broadcast_to(e, from_n.shape)])
        top = terms.max(axis=0)
        pred = top + np.log(np.exp(terms - top).sum(axis=0))
        losses[i : i + chunk] = _huber(pred - logl, delta).sum(axis=1)
    return grid[np.argsort(losses, kind="stable")[:starts]]


def _best_of(
    x0s: np.ndarray, data: tuple[np.ndarray, ...], delta: float
) -> tuple[np.ndarray, float]:
    from scipy.optimize import minimize

    best_x, best_f = x0s[0], math.inf
    for x0 in x0s:
        # Run to convergence: ftol=0 turns off scipy's relative-reduction stop, which
        # scales by max(|f|, 1) and so fires early on objectives ~1e-4 like this one. The
        # paper's own fit "stopped before convergence due to a poor choice of loss scale"
        # (Besiroglu et al. 2024).
        res = minimize(
            _objective,
            x0,
            args=(data, delta),
            jac=True,
            method="L-BFGS-B",
            options={"gtol": 1e-10, "ftol": 0.0, "maxiter": 20_000, "maxfun": 50_000},
        )
        if np.all(np.isfinite(res.x)) and res.fun < best_f:
            best_x, best_f = res.x, float(res.fun)
    if not math.isfinite(best_f):
        raise ValueError("approach 3: no L-BFGS run reached a finite loss")
    return best_x, best_f


@contextlib.contextmanager
def _single_threaded_blas() -> Iterator[None]:
    # Each L-BFGS step makes tiny BLAS calls; on a busy machine OpenBLAS's thread pool
    # makes each one wait, and a fit ran ~50x slower. threadpoolctl is optional (it comes
    # with scikit-learn); without it BLAS threading is left as it is.
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


# ---------------------------------------------------------------- approach 2


class ScalingPoint(NamedTuple):
    """One trained model of a sweep: its training compute (FLOPs), parameters N, training
    tokens D and final loss. A plain (budget, N, D, loss) tuple reads the same."""

    budget: float
    params: float
    tokens: float
    loss: float


@dataclass(frozen=True)
class IsoFlopMinimum:
    """The minimum of one budget's parabola of loss against x = ln N."""

    budget: float
    params: float
    tokens: float
    """budget / (6 * params)."""
    loss: float
    parabola: tuple[float, float, float]
    """(c2, c1, c0): loss = c2 x^2 + c1 x + c0 (numpy.polyval order)."""


@dataclass(frozen=True)
class Approach2Fit:
    """N_opt = k_n C^a and D_opt = k_d C^b through the isoFLOP minima."""

    minima: tuple[IsoFlopMinimum, ...]
    a: float
    b: float
    k_n: float
    k_d: float

    def predict(self, budget: float) -> tuple[float, float]:
        """Compute-optimal (N, D) at `budget` FLOPs."""
        _require_positive(budget=budget)
        return self.k_n * budget**self.a, self.k_d * budget**self.b


def fit_approach2(
    points: Sequence[ScalingPoint | tuple[float, float, float, float]],
) -> Approach2Fit:
    """Chinchilla's approach 2: per budget, a parabola of loss in ln N (at least 3 points,
    positive curvature) and its minimum; then power laws of N_opt and D_opt = C / (6 N_opt)
    in C, fitted by least squares in log space. Budgets within 1e-6 relative are one.

    The parabola is only a Taylor approximation of the isoFLOP profile: wide or off-centre
    sampling in N biases the minima (Czech et al. 2026, arXiv:2603.22339)."""
    rows = _points_array(points)
    minima = []
    for group in _budget_groups(rows[:, 0]):
        budget = float(np.median(rows[group, 0]))
        x, loss = np.log(rows[group, 1]), rows[group, 3]
        if len(np.unique(x)) < 3:
            raise ValueError(
                f"budget {budget:.4g}: an isoFLOP parabola needs at least 3 model sizes "
                f"(got {len(np.unique(x))})"
            )
        c2, c1, c0 = np.polyfit(x, loss, 2)
        if c2 <= 0:
            raise ValueError(
                f"budget {budget:.4g}: loss is not convex in log N (curvature {c2:.3g}), "
                "so the parabola has no minimum; widen the range of model sizes"
            )
        x_opt = -c1 / (2 * c2)
        n_opt = math.exp(x_opt)
        minima.append(
            IsoFlopMinimum(
                budget, n_opt, budget / (6 * n_opt), c0 - c1 * c1 / (4 * c2), (c2, c1, c0)
            )
        )
    if len(minima) < 2:
        raise ValueError(f"approach 2 needs at least 2 budgets (got {len(minima)})")
    log_c = np.log([m.budget for m in minima])
    a, log_kn = np.polyfit(log_c, np.log([m.params for m in minima]), 1)
    b, log_kd = np.polyfit(log_c, np.log([m.tokens for m in minima]), 1)
    return Approach2Fit(tuple(minima), float(a), float(b), math.exp(log_kn), math.exp(log_kd))


def _points_array(points: Sequence[ScalingPoint | tuple[float, ...]]) -> np.ndarray:
    rows = np.asarray([tuple(p) for p in points], dtype=float)
    if rows.ndim != 2 or rows.shape[1] != 4:
        raise ValueError("points must be (budget, N, D, loss) rows")
    _log_points(**{name: rows[:, i] for i, name in enumerate(ScalingPoint._fields)})
    return rows


def _budget_groups(budgets: np.ndarray) -> list[np.ndarray]:
    order = np.argsort(budgets, kind="stable")
    groups: list[list[int]] = []
    for i in order:
        if groups and budgets[i] <= budgets[groups[-1][0]] * (1 + 1e-6):
            groups[-1].append(int(i))
        else:
            groups.append([int(i)])
    return [np.array(g) for g in groups]


# ---------------------------------------------------------------- plot


def plot(
    points: Sequence[ScalingPoint | tuple[float, float, float, float]],
    fit3: Approach3Fit | None,
    fit2: Approach2Fit | None,
    path: str | os.PathLike[str],
) -> Path:
    """A PNG of the sweep: left, loss against compute coloured by N with approach 3's
    curve per model size and its compute-optimal frontier; right, loss against N per budget
    with approach 2's isoFLOP parabolas and their minima. Either fit may be None."""
    # The Agg canvas directly, not pyplot: headless, and no global backend switched.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    rows = _points_array(points)
    budget, n, d, loss = rows.T
    fig = Figure(figsize=(12, 5), layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)

    size_norm = LogNorm(n.min(), max(n.max(), n.min() * 1.01))
    sizes = left.scatter(budget, loss, c=n, norm=size_norm, cmap="viridis", s=16, zorder=3)
    fig.colorbar(sizes, ax=left, label="parameters N")
    if fit3 is not None:
        for size in _representative(np.unique(n), 8):
            mine = n == size
            # The points' own FLOPs per (N * D), so the curve sits on however they count C.
            per_nd = np.median(budget[mine] / (n[mine] * d[mine]))
            tokens = np.geomspace(d[mine].min() / 2, d[mine].max() * 2, 100)
            color = sizes.cmap(size_norm(size))
            left.plot(per_nd * size * tokens, fit3.predict(size, tokens), color=color, lw=1)
        if optimum_problem(fit3) is None:
            budgets = np.geomspace(budget.min(), budget.max(), 50)
            per_token = points_flops_per_token(n, budget / d)
            optimal = np.array([compute_optimal_approach3(fit3, c, per_token) for c in budgets])
            frontier = fit3.predict(optimal[:, 0], optimal[:, 1])
            left.plot(budgets, frontier, "k--", label="approach 3 compute-optimal")
            left.legend()
    left.set(
        xscale="log", xlabel="training compute C (FLOPs)", ylabel="loss", title="loss and compute"
    )

    budget_norm = LogNorm(budget.min(), max(budget.max(), budget.min() * 1.01))
    iso = right.scatter(n, loss, c=budget, norm=budget_norm, cmap="plasma", s=16, zorder=3)
    fig.colorbar(iso, ax=right, label="training compute C (FLOPs)")
    if fit2 is not None:
        for m in fit2.minima:
            mine = np.isclose(budget, m.budget, rtol=1e-6)
            span = np.log(n[mine]) if mine.any() else np.log([m.params / 4, m.params * 4])
            x = np.linspace(span.min(), span.max(), 100)
            color = iso.cmap(budget_norm(m.budget))
            right.plot(np.exp(x), np.polyval(m.parabola, x), color=color, lw=1)
            right.scatter([m.params], [m.loss], marker="*", s=120, color=color, zorder=4)
    right.set(xscale="log", xlabel="parameters N", ylabel="loss", title="isoFLOP profiles")
    from matplotlib.ticker import NullFormatter

    for ax in (left, right):  # less than a decade of range: minor labels would overlap
        ax.xaxis.set_minor_formatter(NullFormatter())

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    fig.savefig(partial, format="png", dpi=110)
    os.replace(partial, path)  # a reader never sees half a PNG
    return path


def _representative(values: np.ndarray, most: int) -> np.ndarray:
    """At most `most` of the sorted `values`, evenly spread by index."""
    if len(values) <= most:
        return values
    return values[np.unique(np.linspace(0, len(values) - 1, most).round().astype(int))]
