"""The one exception type for a weights file that was refused (bad, truncated or hostile).

``WeightsFileError`` is a ``ValueError`` whose message is a single line naming the file, the
tensor or layer, the value found and the limit or expectation it broke, so that a command-line
front end can print ``str(e)`` without a traceback. ``torch_weights.UnsafePickleError`` (a
pickle asking for code) is a subclass.
"""

from __future__ import annotations


class WeightsFileError(ValueError):
    """A weights file was refused before anything was loaded; the message is one line."""

    def __init__(self, message: str):
        # Names inside a file (layer names, keys) are attacker text: keep the message one line.
        super().__init__(" ".join(str(message).splitlines()))
