"""Norm-based complexity measures of a network's weights (PROTOCOL.md §5), as natural logs, in the
``paper`` and ``bartlett`` conventions (:mod:`jaxscale.norms.measures`): in-graph with :class:`Norms`,
by full SVDs with :func:`exact_norms`.
"""

from jaxscale.norms.exact import conv_operator_matrix, exact_norms
from jaxscale.norms.measures import NORM_NAMES
from jaxscale.norms.transform import CONVENTIONS, Norms, NormState

__all__ = ["NORM_NAMES", "CONVENTIONS", "Norms", "NormState", "exact_norms", "conv_operator_matrix"]
