"""Frozen-backbone features: run a pretrained model over a dataset once, cache the pooled
embeddings in HDF5 (one file per backbone and dataset), and load several files side by side.

>>> import features
>>> path = features.extract("resnet50", dataset, "results/features")  # doctest: +SKIP
>>> data = features.load([path, other])                              # doctest: +SKIP
>>> X, y = data["train"]                                             # doctest: +SKIP

Works on any object shaped like ``bench.data.Dataset`` (see ``extract``); imports ``models``
and nothing from ``bench`` or ``ensembles``.
"""

from .extraction import extract
from .store import feature_path, load, read_attrs

__all__ = ["extract", "feature_path", "load", "read_attrs"]
