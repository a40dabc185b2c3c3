"""Norm-based complexity measures of a network's weights (PROTOCOL.md §5), as natural logs.

Two conventions (see :mod:`jaxscale.norms.measures` for the exact formulas):
  * ``"paper"``: exactly the official code's definitions, quirks included, so values are directly
    comparable with the published curves;
  * ``"bartlett"``: the textbook spectral complexity of Bartlett, Foster & Telgarsky (2017) over all
    weight layers, with convolutions' true operator norms.

In-graph use (pure, jittable, vmappable over a leading seed axis)::

    state = init_norm_state(spec.layers, params, key, "paper")   # block=4 vectors per layer
    state = warm_up_norm_state(spec.layers, params, state)        # once: Lanczos, converged
    norms, state = compute_norms(spec.family, spec.layers, params, state, n_iter=1)  # per step

Reference / official approach: :func:`exact_norms` (full SVDs).
"""

from jaxscale.norms.exact import conv_operator_matrix, exact_norms, exact_sigmas
from jaxscale.norms.measures import compute_norms, make_norm_fn, warm_up_norm_state
from jaxscale.norms.power import (
    block_power_iteration,
    conv_apply,
    conv_block_power_iteration,
    conv_operator,
    conv_power_iteration,
    dense_block_power_iteration,
    dense_operator,
    dense_power_iteration,
    lanczos_top,
    lanczos_top_block,
    power_iteration,
)
from jaxscale.norms.state import (
    CONVENTIONS,
    DEFAULT_BLOCK,
    FAMILIES,
    NORM_NAMES,
    NormState,
    init_norm_state,
)

__all__ = [
    "NORM_NAMES",
    "CONVENTIONS",
    "DEFAULT_BLOCK",
    "FAMILIES",
    "NormState",
    "init_norm_state",
    "compute_norms",
    "make_norm_fn",
    "warm_up_norm_state",
    "exact_norms",
    "exact_sigmas",
    "conv_operator_matrix",
    "power_iteration",
    "block_power_iteration",
    "dense_block_power_iteration",
    "conv_block_power_iteration",
    "lanczos_top_block",
    "dense_power_iteration",
    "conv_power_iteration",
    "conv_apply",
    "conv_operator",
    "dense_operator",
    "lanczos_top",
]
