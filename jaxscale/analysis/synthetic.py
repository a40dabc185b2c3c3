"""Synthetic learning curves with known exponents, in the ``curves.npz`` format (for tests and demos).

Model (per run P, seed s), built so that both scaling laws hold exactly in expectation:

* optimal norm λ*_s(P) = λ_ref·(P/P₀)^γ₂·e^{noise·ξ}, ξ ~ N(0, 1) (P₀ = smallest P);
* test error along training, ε(λ) = A_s·K·λ*_s^{−γ₁}·g(λ/λ*_s), saturated smoothly at chance level,
  with g(u) = (u^{−γ₁σ} + r·u^{βσ})^{1/σ}, r = γ₁/β, so that g has its minimum at u = 1 and
  g(u) → u^{−γ₁} left of it. Left of the optimum ε → A_s·K·λ^{−γ₁}: a P-independent power law
  (the collapse), hence ε*(P) ∝ λ*(P)^{−γ₁} ∝ P^{−γ₁γ₂};
* A_s = e^{noise·ζ} is a per-seed level, each logged point also gets a factor e^{noise·η_t}.

The norm grows log-linearly over ``n_epochs`` logged epochs from where the power law reaches chance
level to one decade beyond the largest λ*. K is set so that ε*(smallest P) = ``eps_star_first``.
"""

from __future__ import annotations

import numpy as np

CHANCE = 0.9
_SHARPNESS = 6.0  # σ of g: how abruptly the power law turns into the minimum
_BETA = 1.0  # overfitting slope right of the optimum
_SATURATION = 8.0  # q of the smooth cap ε ↦ (ε^{-q} + chance^{-q})^{-1/q}


def make_synthetic_curves(P, seeds, gamma1: float, gamma2: float, noise: float, rng: np.random.Generator, *,
                          n_epochs: int = 120, eps_star_first: float = 0.06, lambda_ref: float = 100.0,
                          norm: str = "spectral_complexity") -> dict[str, np.ndarray]:
    """Return ``curves.npz``-format arrays: P [nP], seeds [nS], epochs [nT], and [nP, nS, nT] arrays
    ``test_error``, ``train_error``, ``test_loss``, ``train_loss``, ``log_<norm>`` (natural log).

    Args:
      P: training-set sizes [nP]; seeds: seed values [nS] (labels only; randomness comes from ``rng``).
      gamma1, gamma2: the true exponents; noise: scale of the seed and point noise (see module docstring).
      rng: the only source of randomness (same generator state ⇒ same arrays).
    """
    P = np.asarray(P, dtype=np.int64)
    seeds = np.asarray(seeds, dtype=np.int64)
    nP, nS = P.size, seeds.size
    ln_lstar = (np.log(lambda_ref) + gamma2 * np.log(P / P.min()))[:, None] + noise * rng.standard_normal((nP, nS))
    g_min = (1.0 + gamma1 / _BETA) ** (1.0 / _SHARPNESS)  # g(1)
    # K from ε*(P₀) = K·λ_ref^{−γ₁}·g(1); the power law hits chance at λ_sat = (K/CHANCE)^{1/γ₁}.
    ln_k = np.log(eps_star_first / g_min) + gamma1 * np.log(lambda_ref)
    ln_sat = (ln_k - np.log(CHANCE)) / gamma1
    ln_lam = np.linspace(ln_sat - 1.0, ln_lstar.max() + np.log(10.0), n_epochs)  # shared by all runs
    log_u = ln_lam[None, None, :] - ln_lstar[:, :, None]
    r = gamma1 / _BETA
    log_g = np.logaddexp(-gamma1 * _SHARPNESS * log_u, np.log(r) + _BETA * _SHARPNESS * log_u) / _SHARPNESS
    log_eps = (ln_k - gamma1 * ln_lstar[:, :, None] + log_g
               + noise * rng.standard_normal((nP, nS, 1)) + noise * rng.standard_normal((nP, nS, n_epochs)))
    # Smooth cap at chance level: ε ↦ (ε^{−q} + c^{−q})^{−1/q}, computed in logs.
    test_error = np.exp(-np.logaddexp(-_SATURATION * log_eps, -_SATURATION * np.log(CHANCE)) / _SATURATION)
    train_error = test_error * np.linspace(1.0, 0.2, n_epochs)  # plausible, unused by the analysis
    log_norm = np.broadcast_to(ln_lam, (nP, nS, n_epochs)).copy()
    return {
        "P": P,
        "seeds": seeds,
        "epochs": np.arange(1, n_epochs + 1, dtype=np.int64),
        "train_error": train_error,
        "test_error": test_error,
        "train_loss": -np.log1p(-np.minimum(train_error, 0.999)),
        "test_loss": -np.log1p(-np.minimum(test_error, 0.999)),
        "log_" + norm: log_norm,
    }
