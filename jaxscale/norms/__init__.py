"""Norm-based complexity measures of a network's weights (PROTOCOL.md §5), as natural logs.

Two conventions (see :mod:`jaxscale.norms.measures` for the exact formulas):
  * ``"paper"``: exactly the official code's definitions, quirks included, so values are directly
    comparable with the published curves (CNN, ResNet and ViT families);
  * ``"bartlett"``: the textbook spectral complexity of Bartlett, Foster & Telgarsky (2017) over all
    weight layers, with convolutions' true operator norms — for any Flax model.

In-graph use: :class:`Norms` (pure ``init`` / ``update`` / ``read``, jittable, vmappable over a
leading seed axis). Reference / official approach: :func:`exact_norms` (full SVDs).
"""

from jaxscale.norms.exact import conv_operator_matrix, exact_norms
from jaxscale.norms.measures import NORM_NAMES
from jaxscale.norms.transform import CONVENTIONS, DEFAULT_BLOCK, Norms, NormState

__all__ = ["NORM_NAMES", "CONVENTIONS", "DEFAULT_BLOCK", "Norms", "NormState", "exact_norms",
           "conv_operator_matrix"]
