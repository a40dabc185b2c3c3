"""Replica theory of the perceptron: limits, stationarity of the free energy, optimum, population loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import special

from jaxscale.perceptron import theory


def test_hebb_formula_limits_and_known_value():
    # α → 0: random guessing; large α: ε_Hebb ≈ (1/π)·√(π/(2α)) (arccos(√(1−δ)) ≈ √δ)
    assert theory.eps_hebb(1e-9) == pytest.approx(0.5, abs=1e-4)
    a = 1e6
    assert theory.eps_hebb(a) == pytest.approx(math.sqrt(math.pi / (2 * a)) / math.pi, rel=1e-5)
    # R² = 2α/(2α+π) at α = π/2 is 1/2, i.e. R = 1/√2, ε = 1/4
    assert theory.eps_hebb(math.pi / 2) == pytest.approx(0.25, abs=1e-15)
    np.testing.assert_allclose(theory.eps_hebb(np.array([1.0, 2.0])), [theory.eps_hebb(1.0), theory.eps_hebb(2.0)])


@pytest.mark.parametrize("alpha", [0.5, 5.0, 50.0])
def test_small_norm_limit_is_hebb(alpha):
    e4 = theory.eps_fixed_norm(1e-4, alpha)
    assert abs(e4 - theory.eps_hebb(alpha)) < 1e-5
    # and the approach is smooth (linear in λ): the deviation shrinks ~10x per decade
    d3 = abs(theory.eps_fixed_norm(1e-3, alpha) - theory.eps_hebb(alpha))
    d4 = abs(e4 - theory.eps_hebb(alpha))
    assert 7.0 < d3 / d4 < 13.0


@pytest.mark.parametrize("alpha", [0.5, 5.0, 50.0])
def test_large_norm_limit_is_max_margin(alpha):
    sol = theory.fixed_norm_solution(1e5, alpha)
    mm = theory.max_margin_solution(alpha)
    assert abs(sol.eps - mm.eps) < 1e-4
    # the effective margin A/λ tends to the max-margin κ
    assert sol.kappa == pytest.approx(mm.kappa, abs=2e-3)
    assert sol.residual < 1e-10


def test_max_margin_large_alpha_asymptote():
    # Engel & Van den Broeck: ε_ms ≈ 0.5005/α for large α
    for a in (1e3, 1e4):
        assert theory.eps_max_margin(a) * a == pytest.approx(0.5005, abs=2e-3)
    # and it beats Hebb everywhere it is defined
    for a in (0.5, 2.0, 20.0):
        assert theory.eps_max_margin(a) < theory.eps_hebb(a)


def test_fixed_norm_path_robust_over_the_full_range():
    lams = np.geomspace(1e-3, 1e5, 33)
    for alpha in (0.2, 5.0, 300.0):
        sols = theory.fixed_norm_path(lams, alpha)
        eps = np.array([s.eps for s in sols])
        assert np.all(np.isfinite(eps)) and np.all((eps > 0) & (eps < 0.5))
        assert max(s.residual for s in sols) < 1e-10
    # continuation and cold starts find the same root
    for lam in (3e-3, 0.7, 40.0, 2e4):
        assert theory.fixed_norm_solution(lam, 2.0).eps == pytest.approx(
            theory.eps_fixed_norm(np.array([1e-3, lam]), 2.0)[1], abs=1e-11)


def _free_energy(R, A, lam, alpha):
    """e(R, x) = −(1−R²)/(2x) + α E[M_x(h₀)], x = e^A/λ², written independently of the (E1, E2)
    code path: only the quadrature, the densities and the proximal root are shared."""
    s = math.sqrt(1 - R * R)
    x = math.exp(A) / lam**2
    h, w = theory._panels([(0.0, s), (max(A - 1, 0) / lam, 1 / lam)])
    p, _ = theory._densities(R, s, h)
    tau = theory._prox_tau(lam * h, A)
    delta = h + np.exp(tau) / lam
    # Moreau envelope: V(Δ*) + (Δ* − h)²/(2x), V(Δ) = log(1 + e^{−λΔ})
    M = np.logaddexp(0.0, -lam * delta) + (delta - h) ** 2 / (2 * x)
    return -(1 - R * R) / (2 * x) + alpha * float(np.sum(w * p * M))


@pytest.mark.parametrize("lam", [0.3, 3.0, 30.0])
def test_solution_is_a_stationary_point_of_the_free_energy(lam):
    alpha = 3.0
    sol = theory.fixed_norm_solution(lam, alpha)
    h = 1e-5
    dR = (_free_energy(sol.R + h, sol.A, lam, alpha) - _free_energy(sol.R - h, sol.A, lam, alpha)) / (2 * h)
    dA = (_free_energy(sol.R, sol.A + h, lam, alpha) - _free_energy(sol.R, sol.A - h, lam, alpha)) / (2 * h)
    # a perturbed point is not stationary (so the check can fail)
    dR_off = (_free_energy(sol.R * 0.98 + h, sol.A, lam, alpha) - _free_energy(sol.R * 0.98 - h, sol.A, lam, alpha)) / (2 * h)
    assert abs(dR) < 1e-9 and abs(dA) < 1e-9
    # (e itself shrinks like 1/x at large λ, hence the relative criterion)
    assert abs(dR_off) > 1e3 * max(abs(dR), abs(dA), 1e-13)


def test_quadrature_densities_are_normalised():
    for eps in (0.4, 0.05, 1e-4):
        R, s = math.cos(math.pi * eps), math.sin(math.pi * eps)
        h, w = theory._panels([(0.0, s)])
        p, q = theory._densities(R, s, h)
        assert np.sum(w * p) == pytest.approx(1.0, abs=1e-12)
        assert np.sum(w * q) == pytest.approx(math.sqrt(2 / math.pi), abs=1e-12)  # E|u|
        assert np.sum(w * p * h) == pytest.approx(R * math.sqrt(2 / math.pi), abs=1e-12)  # E h₀ = R E|u|


def test_optimal_norm():
    for alpha in (1.0, 5.0):
        opt = theory.optimal_norm(alpha)
        assert opt.lam_star is not None
        e = lambda lam: theory.eps_fixed_norm(lam, alpha)  # noqa: E731
        assert opt.eps_star <= e(opt.lam_star * 1.05) and opt.eps_star <= e(opt.lam_star / 1.05)
        assert opt.eps_star < theory.eps_max_margin(alpha) < theory.eps_hebb(alpha)
    # the optimally tuned norm comes close to the Bayes-optimal 0.442/α at large α (Aubin et al. 2020)
    opt = theory.optimal_norm(100.0)
    assert 0.43 < 100.0 * opt.eps_star < 0.45
    # a range that stops before the optimum reports none
    assert theory.optimal_norm(5.0, lam_min=1e-3, lam_max=1.0, n_grid=9).lam_star is None


def test_population_logistic_loss_against_monte_carlo():
    rng = np.random.default_rng(0)
    n = 400_000
    u, z = rng.standard_normal(n), rng.standard_normal(n)
    for lam, R in ((2.0, 0.8), (20.0, 0.99), (0.05, 0.3)):
        h = R * np.abs(u) + math.sqrt(1 - R * R) * z  # stability of a fresh sample (y u = |u|)
        vals = np.logaddexp(0.0, -lam * h)
        mc, se = vals.mean(), vals.std() / math.sqrt(n)
        assert abs(float(theory.population_logistic_loss(lam, R)) - mc) < 4 * se
    out = theory.population_logistic_loss(np.array([[1e-8, np.nan]]), np.array([[0.5, 0.5]]))
    assert out.shape == (1, 2) and out[0, 0] == pytest.approx(math.log(2), abs=1e-7) and np.isnan(out[0, 1])


def test_bad_arguments():
    with pytest.raises(ValueError):
        theory.eps_fixed_norm(-1.0, 2.0)
    with pytest.raises(ValueError):
        theory.eps_max_margin(0.0)
    # the stable m(t) = tΦ(t) + φ(t) matches the direct formula where the latter is accurate
    t = np.array([-8.0, -2.0, 0.0, 3.0])
    direct = t * special.ndtr(t) + np.exp(-t * t / 2) / math.sqrt(2 * math.pi)
    np.testing.assert_allclose(theory._m(t), direct, rtol=1e-9, atol=1e-300)
