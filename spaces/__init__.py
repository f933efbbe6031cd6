"""Candidate activation functions as safe symbolic formulas, and the EAFO theory.

    >>> import spaces
    >>> c = spaces.parse("relu(x) + eps*x*exp(-x**2/2)", init={"eps": 0.01}, learnable=["eps"])
    >>> act = c.to_module()          # nn.Module with one scalar parameter `eps`
"""
import warnings

from spaces.bases import base_candidate, get_base, list_bases
from spaces.candidate import DEFAULT_INIT, Candidate, Coefficient, parse
from spaces.registry import builtin_candidates, get_activation, list_activations, register_path
from spaces.sanity import sanity_check
from spaces.space import BASELINES, Space, get_space, list_spaces, register_space

# Each generated module warns once when no C compiler builds its kernels; in a search,
# that would be one line per candidate for the same cause: one per process instead.
warnings.filterwarnings("once", message="eafo: no C kernels", category=RuntimeWarning)

# Importing a space module registers it.
from spaces import space_crrelu, space_eafo_default, space_unary_binary  # noqa: E402,F401
from spaces import correction, eafo  # noqa: E402,F401  (entropy and scores; EAFO corrections)

__all__ = ["Candidate", "Coefficient", "DEFAULT_INIT", "parse", "get_base", "list_bases", "base_candidate",
           "sanity_check", "BASELINES", "Space", "get_space", "list_spaces", "register_space", "eafo",
           "get_activation", "list_activations", "register_path", "builtin_candidates"]
