"""Every selection policy: one module each, one registered op each, one :class:`Policy` object each.

What ``Selection.prob[i]`` means, by policy (it is 0 for every row that may not be selected):

- "sb" (``SB``; ``select``, ``select_losses``): ``max(floor, pct_i ** beta)``, 1 while priming: the
  probability of the row's Bernoulli draw. Pushes the valid losses into the history. No weight.
- "uniform" (``Uniform(rate=)``, ``Uniform(k=)``; ``select_uniform``): ``rate``, or ``min(k, n_valid) /
  n_valid``, the row's inclusion probability. Pushes into the history with ``rate`` only. No weight.
- "keep" (``Keep``; ``select_keep``): ``w_i / sum(w)``, Composer's rank weight normalized: the chance to be
  the first of the ``int(keep * N)`` draws. No history, no weight.
- "importance" (``Importance``; ``select_importance``): ``q_i``, the probability of each of the k draws
  (with replacement). Weight ``1 / (n_valid q_i)``.
- "gradmatch" (``GradMatch``; ``select_gradmatch``): 1 for the picked rows. Weight ``k * w_i``.

Every policy keeps SPEC section 5: ``loss`` as in section 2 (0 for ignored rows, NaN for bad targets, the
non-finite value itself); ignored, bad-target and non-finite rows are never selected; every call counts
bad targets and non-finite losses in the state and advances ``step`` by one, on the device.
"""

from .base import Policy
from .gradmatch import GradMatch, select_gradmatch
from .importance import Importance, select_importance
from .keep import Keep, select_keep
from .sb import SB, select, select_losses
from .uniform import Uniform, select_uniform

#: Every policy class by name ("sb", "keep", ...).
POLICIES: dict[str, type[Policy]] = {cls.name: cls for cls in (SB, Keep, Uniform, Importance, GradMatch)}

__all__ = [
    "POLICIES",
    "SB",
    "GradMatch",
    "Importance",
    "Keep",
    "Policy",
    "Uniform",
    "select",
    "select_gradmatch",
    "select_importance",
    "select_keep",
    "select_losses",
    "select_uniform",
]
