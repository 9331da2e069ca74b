"""The versions a record states: Python and the numeric stack, plus any module named."""

from __future__ import annotations

import platform
import sys


def versions(*extra: str) -> dict[str, str]:
    """``{'python', 'jax', 'jaxlib', 'flax', 'optax', 'numpy'}`` plus each module in ``extra``
    that is already imported (``h5py``, ``torch``, ``keras``...); none is imported here."""
    import flax
    import jax
    import jaxlib
    import numpy as np
    import optax

    out = {"python": platform.python_version(), "jax": jax.__version__,
           "jaxlib": jaxlib.__version__, "flax": flax.__version__, "optax": optax.__version__,
           "numpy": np.__version__}
    for name in extra:
        mod = sys.modules.get(name)
        if mod is not None:
            out[name] = getattr(mod, "__version__", "?")
    return out
