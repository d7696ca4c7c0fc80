"""Scaling-law fitting (backends/scaling/fit.py): parameter and FLOP counts against a hand
count, approaches 3 and 2 recovering a known law, compute optima, the plot, bad inputs."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from llmbuild.backends.megatron.sizes import count_params
from llmbuild.backends.scaling.fit import (
    PARAMETERS,
    Approach3Fit,
    ScalingPoint,
    compute_optimal_approach3,
    fit_approach2,
    fit_approach3,
    flops_per_token,
    optimum_problem,
    plot,
    points_flops_per_token,
    training_flops,
    unfittable,
)

# Chinchilla's published fit (Hoffmann et al. 2022, eq. 10): the law the data come from.
TRUE = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
LAW = Approach3Fit(**TRUE, loss=0.0, n_points=0)
# Exponents of N_opt ∝ C^a and D_opt ∝ C^b implied by the law.
TRUE_A = TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"])
TRUE_B = TRUE["alpha"] / (TRUE["alpha"] + TRUE["beta"])
BUDGETS = (1e17, 1e18, 1e19, 1e20, 1e21)


def law_grid(noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An 8 x 8 grid of N in [1e6, 1e9] and D in [1e8, 1e11], losses from the law times
    log-normal noise of relative size `noise`."""
    N, D = (x.ravel() for x in np.meshgrid(np.geomspace(1e6, 1e9, 8), np.geomspace(1e8, 1e11, 8)))
    noise_factor = np.exp(np.random.default_rng(seed).normal(0.0, noise, N.size))
    return N, D, LAW.predict(N, D) * noise_factor


def isoflop_points(noise: float, seed: int = 0) -> list[ScalingPoint]:
    """A sweep as one is run: model sizes from one fixed log grid (ratio ~1.33), each
    budget training those within 4x of its optimum, D = C / (6 N)."""
    sizes = np.geomspace(1e6, 1e11, 41)
    rng = np.random.default_rng(seed)
    points = []
    for budget in BUDGETS:
        n_opt, _ = compute_optimal_approach3(LAW, budget)
        for n in sizes[(sizes > n_opt / 4) & (sizes < n_opt * 4)]:
            d = budget / (6 * n)
            loss = float(LAW.predict(n, d)) * math.exp(rng.normal(0.0, noise))
            points.append(ScalingPoint(budget, float(n), d, loss))
    return points


# ---------------------------------------------------------------- counts


def test_count_params_matches_hand_count():
    # layers=2, hidden=64, heads=4 (head_dim 16), kv_heads=2 (k/v width 2*16 = 32),
    # ffn=128, vocab=100, seq_len=32.
    # attention per layer: q 64*64 + k 64*32 + v 64*32 + o 64*64 = 4096+2048+2048+4096 = 12288
    # SwiGLU MLP per layer: 3 * 64*128 = 24576; plain MLP: 2 * 64*128 = 16384
    # norms: 2 layers * 2 * 64 + final 64 = 320
    # gated non-embedding: 2 * (12288 + 24576) + 320 = 74048
    # embeddings untied, rope: 2 * 100*64 = 12800 -> params 86848
    gated = count_params(2, 64, 4, 2, 128, 100, 32, gated=True, tied=False, position="rope")
    assert gated == {
        "params": 86848,
        "non_embedding_params": 74048,
        "attention": 24576,
        "mlp": 49152,
        "norms": 320,
        "embeddings": 12800,
    }
    # plain MLP non-embedding: 2 * (12288 + 16384) + 320 = 57664
    # embeddings tied, learned positions: 100*64 + 32*64 = 6400 + 2048 = 8448 -> 66112
    plain = count_params(2, 64, 4, 2, 128, 100, 32, gated=False, tied=True, position="learned")
    assert plain["non_embedding_params"] == 57664
    assert plain["embeddings"] == 8448
    assert plain["params"] == 66112


def test_flops_match_hand_count():
    # 6 * 74048 = 444288; attention 6 * layers 2 * seq 32 * hidden 64 = 24576; sum 468864
    assert flops_per_token(74048, layers=2, hidden=64, seq_len=32) == 468864
    assert training_flops(74048, layers=2, hidden=64, seq_len=32, tokens=1000) == 468_864_000


# ---------------------------------------------------------------- approach 3


def test_approach3_recovers_the_law_exactly_without_noise():
    fit = fit_approach3(*law_grid(noise=0.0))
    for name, value in TRUE.items():
        # measured: relative errors below 1e-13
        assert getattr(fit, name) == pytest.approx(value, rel=1e-6), name
    assert fit.loss < 1e-20
    assert fit.n_points == 64 and fit.intervals is None


def test_approach3_is_refused_where_n_or_d_never_varies():
    """Points all trained on the same tokens (or all of one size) say nothing of that
    term: a fit to them still converges, to an exponent the data never chose, so it is
    refused, saying what to vary."""
    N, D, _ = law_grid(noise=0.0)
    assert unfittable(N, D) is None
    same_d = np.full_like(D, 7680.0)
    loss = LAW.predict(N, same_d)
    why = unfittable(N, same_d)
    assert why is not None and "D (training tokens) = 7680" in why and "budgets" in why
    # the fit would have answered: any beta fits these points as well as the true one
    other = Approach3Fit(**{**TRUE, "beta": 2.0, "B": TRUE["B"] * 7680.0 ** (2.0 - 0.28)},
                         loss=0.0, n_points=0)  # fmt: skip
    assert other.predict(N, same_d) == pytest.approx(loss, rel=1e-9)
    why = unfittable(np.full_like(N, 1e6), D)
    assert why is not None and "N (non-embedding parameters) = 1e+06" in why


@pytest.fixture(scope="module")
def noisy_fit() -> Approach3Fit:
    return fit_approach3(*law_grid(noise=0.005), bootstrap=40, seed=0)


def test_approach3_recovers_the_law_under_half_a_percent_noise(noisy_fit):
    # Measured on this data: E +1.0%, A +2.0%, B +4.4%, alpha +0.0014, beta +0.0027.
    # Over 40 noise seeds the worst were E 2.8%, alpha 0.008, beta 0.010.
    assert abs(noisy_fit.alpha - TRUE["alpha"]) < 0.03
    assert abs(noisy_fit.beta - TRUE["beta"]) < 0.03
    assert abs(noisy_fit.E / TRUE["E"] - 1) < 0.03
    assert abs(noisy_fit.A / TRUE["A"] - 1) < 0.25
    assert abs(noisy_fit.B / TRUE["B"] - 1) < 0.25
    N, D, _ = law_grid(noise=0.0)
    # The noise averages out of the fitted surface: measured max error 0.24%.
    np.testing.assert_allclose(noisy_fit.predict(N, D), LAW.predict(N, D), rtol=0.005)


def test_bootstrap_intervals_contain_the_true_values(noisy_fit):
    # 90% percentile intervals: over 40 noise seeds each parameter's covered the truth
    # 90-97% of the time, so this fixed-seed check could miss for another seed.
    intervals = noisy_fit.intervals
    assert intervals is not None and set(intervals) == set(PARAMETERS)
    for name, (low, high) in intervals.items():
        assert low <= TRUE[name] <= high, (name, low, high)
        assert low <= getattr(noisy_fit, name) <= high, name
    # Not vacuous: the exponents' intervals are narrow (measured widths 0.014 and 0.016).
    assert intervals["alpha"][1] - intervals["alpha"][0] < 0.05
    assert intervals["beta"][1] - intervals["beta"][0] < 0.05


def test_compute_optimum_closed_form_is_the_isoflop_minimum():
    budget = 1e21
    n_opt, d_opt = compute_optimal_approach3(LAW, budget)
    assert 6 * n_opt * d_opt == pytest.approx(budget, rel=1e-12)
    # Brute force along the isoFLOP curve, on a grid of step 1e-4 in ln N.
    n = n_opt * np.exp(np.arange(-2.0, 2.0, 1e-4))
    brute = n[np.argmin(LAW.predict(n, budget / (6 * n)))]
    assert brute == pytest.approx(n_opt, rel=2e-4)
    # The numeric path with fn(N) = 6N is the closed form.
    n_num, d_num = compute_optimal_approach3(LAW, budget, lambda n: 6 * n)
    assert (n_num, d_num) == pytest.approx((n_opt, d_opt), rel=1e-6)

    # An attention term makes every token dearer: the budget is spent as fn(N) * D.
    def with_attention(n: float) -> float:
        return flops_per_token(n, layers=24, hidden=2048, seq_len=2048)

    n_att, d_att = compute_optimal_approach3(LAW, budget, with_attention)
    assert with_attention(n_att) * d_att == pytest.approx(budget, rel=1e-9)
    assert d_att < d_opt


# ---------------------------------------------------------------- approach 2


@pytest.mark.parametrize(
    ("noise", "tolerance"),
    [
        (0.0, 0.005),  # measured error 1.9e-4
        (0.002, 0.02),  # measured 0.003 here, at most 0.0065 over 20 noise seeds
    ],
)
def test_approach2_recovers_the_exponents(noise, tolerance):
    fit = fit_approach2(isoflop_points(noise))
    assert [m.budget for m in fit.minima] == list(BUDGETS)
    assert abs(fit.a - TRUE_A) < tolerance
    assert abs(fit.b - TRUE_B) < tolerance
    for m in fit.minima:
        assert 6 * m.params * m.tokens == pytest.approx(m.budget)


def test_approach2_agrees_with_approach3_beyond_the_sweep():
    points = isoflop_points(noise=0.0)
    fit2 = fit_approach2(points)
    fit3 = fit_approach3(
        [p.params for p in points], [p.tokens for p in points], [p.loss for p in points]
    )
    budget = 1e23  # 100x the largest budget swept
    n2, d2 = fit2.predict(budget)
    n3, d3 = compute_optimal_approach3(fit3, budget)
    # A parabola in ln N is not the exact isoFLOP profile, so approach 2's minima sit a
    # little off: measured N ratio 1.009 and D ratio 0.991 here (noise-free); the N ratio
    # was 0.92-1.08 with 0.2% noise over 20 seeds.
    assert 1 / 1.05 < n2 / n3 < 1.05
    assert 1 / 1.05 < d2 / d3 < 1.05


def test_approach2_takes_plain_tuples():
    points = [tuple(p) for p in isoflop_points(noise=0.0)]
    assert fit_approach2(points).a == pytest.approx(fit_approach2(isoflop_points(0.0)).a)


# ---------------------------------------------------------------- plot

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_plot_writes_a_png(tmp_path):
    points = isoflop_points(noise=0.002)
    fit2 = fit_approach2(points)
    fit3 = fit_approach3(
        [p.params for p in points], [p.tokens for p in points], [p.loss for p in points]
    )
    path = plot(points, fit3, fit2, tmp_path / "plots" / "scaling.png")
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert sorted(p.name for p in path.parent.iterdir()) == ["scaling.png"]
    bare = plot(points, None, None, tmp_path / "bare.png")
    assert bare.read_bytes()[:8] == PNG_SIGNATURE


def test_import_is_cheap():
    code = (
        "import sys, llmbuild.backends.scaling.fit; "
        "assert not {'scipy', 'matplotlib'} & set(sys.modules), 'heavy import'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- bad inputs

N5, D5, L5 = [1e6, 1e7, 1e8, 1e9, 1e9], [1e9, 1e9, 1e10, 1e10, 1e11], [4.0, 3.5, 3.0, 2.8, 2.5]


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((N5[:4], D5[:4], L5[:4]), {}, "at least 5 points"),
        (([0.0, *N5[1:]], D5, L5), {}, "N must be positive"),
        ((N5, [-1.0, *D5[1:]], L5), {}, "D must be positive"),
        ((N5, D5, [math.nan, *L5[1:]]), {}, "L has NaN"),
        ((N5, D5, [math.inf, *L5[1:]]), {}, "L has NaN or infinite"),
        ((N5, D5[:4], L5), {}, "same length"),
        ((N5, D5, L5), {"huber_delta": 0.0}, "huber_delta"),
        ((N5, D5, L5), {"bootstrap": -1}, "bootstrap"),
        ((N5, D5, L5), {"starts": 0}, "starts"),
    ],
)
def test_fit_approach3_rejects_bad_input(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        fit_approach3(*args, **kwargs)


def test_fit_approach2_rejects_bad_input():
    good = [(1e18, n, 1e18 / (6 * n), 3.0 + (math.log(n) - 18) ** 2) for n in (1e7, 1e8, 1e9)]
    two_points = [(1e19, 1e8, 1e19 / 6e8, 3.0), (1e19, 1e9, 1e19 / 6e9, 2.9)]
    with pytest.raises(ValueError, match=r"budget 1e\+19: .* at least 3 model sizes \(got 2\)"):
        fit_approach2(good + two_points)
    concave = [
        (1e19, n, 1e19 / (6 * n), 3.0 - 0.1 * (math.log(n) - 18) ** 2) for n in (1e7, 1e8, 1e9)
    ]
    with pytest.raises(ValueError, match=r"budget 1e\+19: loss is not convex"):
        fit_approach2(good + concave)
    with pytest.raises(ValueError, match="at least 2 budgets"):
        fit_approach2(good)
    with pytest.raises(ValueError, match="loss has NaN"):
        fit_approach2([*good[:2], (1e18, 1e9, 1e9, math.nan)])
    with pytest.raises(ValueError, match="params must be positive"):
        fit_approach2([*good[:2], (1e18, -1.0, 1e9, 3.0)])
    with pytest.raises(ValueError, match=r"\(budget, N, D, loss\) rows"):
        fit_approach2([(1e18, 1e8, 3.0)])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: count_params(2, 60, 8, 2, 128, 100, 32, True, False, "rope"), "divide hidden"),
        (lambda: count_params(2, 64, 4, 3, 128, 100, 32, True, False, "rope"), "divide heads"),
        (lambda: count_params(2, 64, 4, 2, 128, 100, 32, True, False, "alibi"), "position"),
        (lambda: count_params(0, 64, 4, 2, 128, 100, 32, True, False, "rope"), "layers"),
        (lambda: flops_per_token(0, 2, 64, 32), "non_embedding_params"),
        (lambda: training_flops(100, 2, 64, 32, tokens=math.nan), "tokens"),
        (lambda: compute_optimal_approach3(LAW, -1.0), "budget_flops"),
        (lambda: compute_optimal_approach3(LAW, 1e21, lambda n: -1.0), "flops_per_token_fn"),
        (lambda: fit_approach2(isoflop_points(0.0)).predict(0.0), "budget"),
    ],
)
def test_counts_and_optima_reject_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_the_fit_says_how_sure_it_is_and_why_a_law_is_missing():
    from llmbuild.backends.scaling.run import fit_lines

    law = {"E": 0.5, "A": 4.5, "B": 13.3, "alpha": 0.45, "beta": 0.16, "loss": 0.1}
    tight = {**law, "intervals": {"E": (0.4, 0.6), "alpha": (0.4, 0.5), "beta": (0.1, 0.2)}}
    lines = fit_lines({"approach3": tight, "approach2_error": "not convex in log N"})
    assert lines[0].startswith("approach 3: L = 0.500 + 4.5 / N^0.450")
    assert "alpha 0.4 to 0.5" in lines[1] and not any("pin" in line for line in lines)
    assert lines[-1] == "approach 2: not fitted: not convex in log N"
    loose = {**law, "intervals": {"E": (0.0, 1.0), "alpha": (-0.21, 26.2), "beta": (0.1, 0.2)}}
    assert "does not pin this law down" in fit_lines({"approach3": loose})[2]
    few = {"approach3_error": "it needs at least 5 points (the sweep has 2)"}
    assert fit_lines(few) == [
        "approach 3: not fitted: it needs at least 5 points (the sweep has 2)"
    ]


def test_the_optimum_spends_the_budget_as_the_points_count_flops():
    """The points count 6N plus attention per token; the optimum is found under the same
    count, through a power law of the points' own (N, FLOPs per token)."""
    shapes = [(2, 16), (2, 32), (2, 64), (4, 64)]
    n = [12 * layers * hidden**2 for layers, hidden in shapes]
    per_token = [
        flops_per_token(size, layers, hidden, 64) for size, (layers, hidden) in zip(n, shapes)
    ]
    fn = points_flops_per_token(n, per_token)
    for size, counted in zip(n, per_token):
        assert fn(size) == pytest.approx(counted, rel=0.15)
    assert fn(1e6) > 6e6  # attention on top of 6N, beyond the points too
    budget = 1e13
    n_opt, d_opt = compute_optimal_approach3(LAW, budget, fn)
    assert fn(n_opt) * d_opt == pytest.approx(budget, rel=1e-9)
    one = points_flops_per_token([n[0], n[0]], [per_token[0]] * 2)  # one size: its ratio
    assert one(2 * n[0]) == pytest.approx(2 * per_token[0])


def test_a_law_whose_exponent_is_not_positive_has_no_optimum_and_still_plots(tmp_path):
    """A sweep of one model size cannot fix alpha: the fit can come out with alpha <= 0,
    where no budget has an optimum; the fit is kept, with why, and plotted without it."""
    from llmbuild.backends.scaling.run import fit_lines

    flat = Approach3Fit(E=1.0, A=2.0, B=30.0, alpha=-0.03, beta=0.81, loss=0.0, n_points=5)
    problem = optimum_problem(flat)
    assert problem.startswith("no compute optimum: the fit's alpha = -0.03 and beta = 0.81")
    assert "alpha <= 0 the loss does not fall as N grows" in problem
    assert "beta <= 0" not in problem
    tokens_flat = optimum_problem(Approach3Fit(1.0, 2.0, 30.0, 0.3, 0.0, 0.0, 5))
    assert "beta <= 0 it does not fall as D grows" in tokens_flat and "alpha <=" not in tokens_flat
    lost = optimum_problem(Approach3Fit(1.0, 2.0, 30.0, float("nan"), 0.3, 0.0, 5))
    assert lost.endswith("must both be > 0; the fit did not converge: sweep sizes and budgets "
                         "further apart")  # fmt: skip
    assert optimum_problem(LAW) is None
    points = [
        ScalingPoint(6 * 1e4 * d, 1e4, d, float(flat.predict(1e4, d))) for d in (1e5, 1e6, 1e7)
    ]
    assert plot(points, flat, None, tmp_path / "flat.png").read_bytes()[:8] == PNG_SIGNATURE
    law = {"E": 1.0, "A": 2.0, "B": 30.0, "alpha": -0.03, "beta": 0.81, "loss": 0.0}
    assert fit_lines({"approach3": law, "approach3_optimum_error": problem})[1] == f"  {problem}"


def test_status_says_when_a_sweep_has_no_law():
    from llmbuild.cli.status_cmd import scaling_line

    assert scaling_line("iso", {"points": 4}) == (
        "scaling iso: 4 points; no law fitted (llmbuild scaling says why)"
    )
    law = {"points": 9, "E": 1.5, "A": 20.0, "B": 300.0, "alpha": 0.3, "beta": 0.25}
    assert scaling_line("iso", law).startswith("scaling iso: 9 points; L(N, D) = 1.500 + 20 / N^")


def test_points_no_better_than_uniform_are_left_out_of_the_fits():
    """A point whose held-out loss is at or above ln V diverged short of a NaN or learned
    nothing: fitted, it would bend the law; it is left out, with why."""
    from llmbuild.backends.scaling.run import usable

    good = {"stage": "a", "loss": 2.0, "vocab_size": 65}
    blown = {"stage": "b", "loss": 122.0, "vocab_size": 65}
    flat = {"stage": "c", "loss": math.log(65), "vocab_size": 65}
    kept, out = usable([good, blown, flat])
    assert kept == [good]
    assert [p["stage"] for p in out] == ["b", "c"]
    assert out[0]["excluded"] == (
        "its held-out loss 122 is no better than guessing each of its 65 tokens alike "
        "(ln 65 = 4.174): it diverged or learned nothing"
    )


def test_a_sweep_of_fewer_points_than_the_law_has_parameters_is_warned_of(tmp_path, capsys):
    """Said at validate, not only by `llmbuild scaling` after every point is trained; the
    count is the fit's own."""
    from llmbuild.backends.scaling.fit import PARAMETERS

    from llmbuild.cli import main
    from llmbuild.spec.advice import FIT_PARAMETERS
    from tests.backends.test_scaling_sweep import SWEEP
    from tests.conftest import write_project

    assert len(PARAMETERS) == FIT_PARAMETERS
    spec = write_project(tmp_path, SWEEP.format(hidden="[16]"))  # two budgets: 2 points
    assert main(["validate", str(spec)]) == 0
    err = capsys.readouterr().err
    assert "has 2 points: approach 3 fits 5 parameters and needs at least 5 points" in err, err
    spec = write_project(tmp_path, SWEEP.format(hidden="[16, 32, 64]"))
    assert main(["validate", str(spec)]) == 0
    assert "approach 3 fits" not in capsys.readouterr().err
