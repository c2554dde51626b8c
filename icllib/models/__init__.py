"""Models of the book, one file each (read top to bottom, like nanoGPT's ``model.py``).

- :mod:`icllib.models.one_layer`: the one-layer multi-head softmax-attention model of Yang et al. (2024), in the
  parameterisation that the paper trains and analyses, and the general W_Q/W_K/W_V/W_O form it comes from.
- :mod:`icllib.models.multilayer`: a standard multi-layer transformer for the deeper experiments of Part I.
- :mod:`icllib.models.causal`: the small causal sequence transformer of Part III.
"""

from icllib.models.causal import *  # noqa: F401,F403
from icllib.models.causal import __all__ as _causal_all
from icllib.models.multilayer import *  # noqa: F401,F403
from icllib.models.multilayer import __all__ as _multilayer_all
from icllib.models.one_layer import *  # noqa: F401,F403
from icllib.models.one_layer import __all__ as _one_layer_all

__all__ = [*_one_layer_all, *_multilayer_all, *_causal_all]
