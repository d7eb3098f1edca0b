"""Step schedules: closed forms, the gaps parameterisation, interpolation and validation."""

from __future__ import annotations

import math

import pytest
import torch

from sigmatune.models.schedules import (
    SCHEDULES,
    from_gaps,
    interpolate,
    karras,
    loglinear,
    to_gaps,
    validate,
)

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0


def closed_karras(n: int, sigma_min: float, sigma_max: float, rho: float) -> list[float]:
    """Karras et al. 2022 eq. 5, written out in Python floats."""
    if n == 1:
        return [sigma_max, 0.0]
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    # a + t (b - a) written as (1 - t) a + t b, so that t = 1 gives sigma_min without cancellation
    return [((1 - i / (n - 1)) * a + i / (n - 1) * b) ** rho for i in range(n)] + [0.0]


def closed_loglinear(n: int, sigma_min: float, sigma_max: float) -> list[float]:
    """Geometric spacing: s_i = sigma_max (sigma_min/sigma_max)^(i/(n-1))."""
    if n == 1:
        return [sigma_max, 0.0]
    return [sigma_max * (sigma_min / sigma_max) ** (i / (n - 1)) for i in range(n)] + [0.0]


@pytest.mark.parametrize("rho", [1.0, 3.0, 7.0])
@pytest.mark.parametrize("n", [1, 2, 5, 40])
def test_karras_matches_closed_form(n: int, rho: float) -> None:
    expected = torch.tensor(closed_karras(n, SIGMA_MIN, SIGMA_MAX, rho), dtype=torch.float64)
    torch.testing.assert_close(karras(n, SIGMA_MIN, SIGMA_MAX, rho), expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("n", [1, 2, 5, 40])
def test_loglinear_matches_closed_form_and_is_uniform_in_lam(n: int) -> None:
    s = loglinear(n, SIGMA_MIN, SIGMA_MAX)
    expected = torch.tensor(closed_loglinear(n, SIGMA_MIN, SIGMA_MAX), dtype=torch.float64)
    torch.testing.assert_close(s, expected, rtol=1e-12, atol=0)
    if n > 1:
        lam_gaps = torch.diff(-2 * s[:-1].log())
        step = 2 * math.log(SIGMA_MAX / SIGMA_MIN) / (n - 1)
        torch.testing.assert_close(lam_gaps, torch.full_like(lam_gaps, step), rtol=1e-12, atol=0)


@pytest.mark.parametrize("n", [1, 2, 3, 18])
@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_builders_return_valid_float64_with_exact_ends(name: str, n: int) -> None:
    s = SCHEDULES[name](n, SIGMA_MIN, SIGMA_MAX)
    assert s.dtype == torch.float64 and s.shape == (n + 1,)
    assert s[-1].item() == 0.0 and s[0].item() == SIGMA_MAX
    if n > 1:
        assert s[-2].item() == SIGMA_MIN
    assert torch.equal(validate(s), s)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 0}, r"n must be an integer >= 1, but got n=0"),
        ({"n": 2.5}, r"n must be an integer >= 1, but got n=2.5"),
        ({"sigma_min": 0.0}, r"sigma_min must be > 0 and finite, but got sigma_min=0.0"),
        ({"sigma_min": -1.0}, r"sigma_min must be > 0 and finite, but got sigma_min=-1.0"),
        ({"sigma_max": 0.001}, r"sigma_max must be finite and > sigma_min=0.002, .*=0.001"),
        ({"sigma_max": 0.002}, r"sigma_max must be finite and > sigma_min"),
        ({"sigma_max": math.inf}, r"sigma_max must be finite and > sigma_min"),
    ],
)
@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_builders_reject_bad_arguments(name: str, kwargs: dict, match: str) -> None:
    args = {"n": 10, "sigma_min": SIGMA_MIN, "sigma_max": SIGMA_MAX, **kwargs}
    with pytest.raises(ValueError, match=match):
        SCHEDULES[name](**args)


@pytest.mark.parametrize("rho", [0.0, -7.0, math.nan])
def test_karras_rejects_bad_rho(rho: float) -> None:
    with pytest.raises(ValueError, match=r"rho must be > 0 and finite, but got rho="):
        karras(10, SIGMA_MIN, SIGMA_MAX, rho)


def test_from_gaps_places_steps_at_cumulative_fractions_of_lam() -> None:
    # gaps 1 and 3 → positions at 0, 1/4 and 1 of [lam_min, lam_max]
    lam_min, lam_max = -2 * math.log(SIGMA_MAX), -2 * math.log(SIGMA_MIN)
    lam = [lam_min, lam_min + 0.25 * (lam_max - lam_min), lam_max]
    expected = torch.tensor([math.exp(-v / 2) for v in lam] + [0.0], dtype=torch.float64)
    torch.testing.assert_close(
        from_gaps([1.0, 3.0], SIGMA_MIN, SIGMA_MAX), expected, rtol=1e-12, atol=0
    )
    # equal gaps are the log-linear schedule, whatever their scale
    torch.testing.assert_close(
        from_gaps(torch.full((9,), 0.3), SIGMA_MIN, SIGMA_MAX),
        loglinear(10, SIGMA_MIN, SIGMA_MAX),
        rtol=1e-12,
        atol=0,
    )


@pytest.mark.parametrize("n_gaps", [1, 2, 9, 50])
def test_random_gaps_round_trip(n_gaps: int) -> None:
    g = torch.Generator().manual_seed(n_gaps)
    gaps = torch.exp(2 * torch.randn(n_gaps, generator=g, dtype=torch.float64))
    s = from_gaps(gaps, SIGMA_MIN, SIGMA_MAX)
    assert s.shape == (n_gaps + 2,) and s[0].item() == SIGMA_MAX and s[-2].item() == SIGMA_MIN
    fractions = to_gaps(s)
    torch.testing.assert_close(fractions, gaps / gaps.sum(), rtol=1e-9, atol=1e-15)
    assert fractions.sum().item() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("n", [1, 2, 7, 32])
@pytest.mark.parametrize(
    "schedule",
    [
        lambda n: karras(n, SIGMA_MIN, SIGMA_MAX, 7.0),
        lambda n: karras(n, 0.03, 14.6, 3.0),
        lambda n: loglinear(n, 0.01, 1.0),
    ],
    ids=["karras", "karras-sd", "loglinear"],
)
def test_any_schedule_round_trips_through_gaps(schedule, n: int) -> None:
    s = schedule(n)
    gaps = to_gaps(s)
    assert gaps.dtype == torch.float64 and gaps.shape == (n - 1,) and (gaps > 0).all()
    back = from_gaps(gaps, s[-2].item(), s[0].item())
    torch.testing.assert_close(back, s, rtol=1e-12, atol=0)


def test_one_step_schedule_has_no_gaps() -> None:
    assert to_gaps([5.0, 0.0]).shape == (0,)
    assert from_gaps([], 5.0, 5.0).tolist() == [5.0, 0.0]
    assert from_gaps([], SIGMA_MIN, SIGMA_MAX).tolist() == [SIGMA_MAX, 0.0]


@pytest.mark.parametrize("gaps", [[1.0, 0.0], [1.0, -2.0], [1.0, math.nan], [math.inf, 1.0]])
def test_from_gaps_rejects_non_positive_gaps(gaps: list[float]) -> None:
    with pytest.raises(ValueError, match=r"gaps must be > 0 and finite, but got gaps="):
        from_gaps(gaps, SIGMA_MIN, SIGMA_MAX)


def test_from_gaps_rejects_bad_range() -> None:
    with pytest.raises(ValueError, match=r"sigma_max must be finite and > sigma_min"):
        from_gaps([1.0], 1.0, 1.0)
    with pytest.raises(ValueError, match=r"sigma_min must be > 0"):
        from_gaps([1.0], 0.0, 1.0)


@pytest.mark.parametrize(
    ("sigmas", "match"),
    [
        ([[2.0, 1.0, 0.0]], r"sigmas must be 1-D, but got shape=\(1, 3\)"),
        ([0.0], r"sigmas must have at least 2 values \(one step\), but got sigmas=\[0\.0\]"),
        ([], r"sigmas must have at least 2 values"),
        ([2.0, math.nan, 0.0], r"sigmas must be finite, but got sigmas=\[2\.0, nan, 0\.0\]"),
        ([math.inf, 1.0, 0.0], r"sigmas must be finite, but got sigmas=\[inf, 1\.0, 0\.0\]"),
        ([2.0, 1.0, 0.5], r"sigmas must end with exactly 0, but got sigmas=\[2\.0, 1\.0, 0\.5\]"),
        ([2.0, 1.0, 1e-300], r"sigmas must end with exactly 0"),
        (
            [1.0, -0.5, 0.0],
            r"sigmas must be > 0 before the last, but got sigmas=\[1\.0, -0\.5, 0\.0\]",
        ),
        (
            [1.0, 2.0, 0.0],
            r"sigmas must be strictly decreasing, but got sigmas=\[1\.0, 2\.0, 0\.0\]",
        ),
        ([3.0, 1.0, 1.0, 0.0], r"sigmas must be strictly decreasing"),
    ],
)
def test_validate_rejects_each_fault_by_name(sigmas: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        validate(sigmas)


def test_validate_returns_float64_copy_of_good_input() -> None:
    out = validate(torch.tensor([3.0, 1.0, 0.0], dtype=torch.float32))
    assert out.dtype == torch.float64 and out.tolist() == [3.0, 1.0, 0.0]
    assert validate([14.6, 0.03, 0.0]).tolist() == [14.6, 0.03, 0.0]


def test_interpolate_is_piecewise_log_linear_over_the_step_index() -> None:
    # three positive sigmas at index 0, 1, 2 → five at 0, 0.5, 1, 1.5, 2
    out = interpolate([10.0, 1.0, 0.01, 0.0], 5)
    expected = torch.tensor([10.0, math.sqrt(10.0), 1.0, 0.1, 0.01, 0.0], dtype=torch.float64)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("n", [1, 2, 5, 10, 33])
def test_interpolate_keeps_end_points_and_log_linear_schedules(n: int) -> None:
    s = karras(10, SIGMA_MIN, SIGMA_MAX)
    out = interpolate(s, n)
    assert out.shape == (n + 1,) and out[0].item() == SIGMA_MAX and out[-1].item() == 0.0
    if n > 1:
        assert out[-2].item() == SIGMA_MIN
    assert torch.equal(validate(out), out)
    # a schedule log-linear in the index stays log-linear: it becomes loglinear(n)
    torch.testing.assert_close(
        interpolate(loglinear(7, SIGMA_MIN, SIGMA_MAX), n),
        loglinear(n, SIGMA_MIN, SIGMA_MAX),
        rtol=1e-12,
        atol=0,
    )
    # interpolating to the same number of steps is the identity
    torch.testing.assert_close(interpolate(s, 10), s, rtol=1e-12, atol=0)


def test_interpolate_rejects_bad_requests() -> None:
    with pytest.raises(ValueError, match=r"n must be an integer >= 1, but got n=0"):
        interpolate(karras(4, SIGMA_MIN, SIGMA_MAX), 0)
    with pytest.raises(ValueError, match=r"at least 2 positive values to interpolate"):
        interpolate([5.0, 0.0], 3)
    with pytest.raises(ValueError, match=r"strictly decreasing"):
        interpolate([1.0, 2.0, 0.0], 3)
    assert interpolate([5.0, 0.0], 1).tolist() == [5.0, 0.0]


# ------------------------------------------------------------------ from a density over lam


def test_from_density_of_a_uniform_density_is_loglinear():
    from sigmatune.models.schedules import from_density
    from sigmatune.objectives.densities import Uniform

    uniform = Uniform(sigma_min=0.002, sigma_max=80.0)
    for n, lo, hi in ((1, 0.1, 1.0), (2, 0.1, 1.0), (5, 0.1, 1.2), (9, 0.002, 80.0)):
        got = from_density(uniform, n, lo, hi)
        assert got.tolist() == pytest.approx(loglinear(n, lo, hi).tolist(), rel=1e-12)


def test_from_density_of_edms_lognormal_matches_scipys_normal_quantiles():
    """EDM's training density: ln sigma ~ N(-1.2, 1.2^2), truncated to the run's range; the
    steps are its quantiles at equal probability between the ends (scipy, independently)."""
    from scipy.stats import norm

    from sigmatune.models.schedules import from_density
    from sigmatune.objectives.densities import LogNormal

    density = LogNormal(-1.2, 1.2, sigma_min=0.002, sigma_max=80.0)
    lo, hi, n = 0.01, 20.0, 6
    got = from_density(density, n, lo, hi)
    u_hi, u_lo = norm.cdf((math.log(hi) + 1.2) / 1.2), norm.cdf((math.log(lo) + 1.2) / 1.2)
    u = [u_hi + i / (n - 1) * (u_lo - u_hi) for i in range(n)]
    expected = [math.exp(-1.2 + 1.2 * norm.ppf(v)) for v in u] + [0.0]
    assert got.tolist() == pytest.approx(expected, rel=1e-7)
    assert got[0].item() == hi and got[-2].item() == lo
