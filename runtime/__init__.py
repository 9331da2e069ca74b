"""The floor under every package of the project: runtime helpers used by more than one of
``models``, ``features`` and ``bench`` (cache roots, hashing, versions, atomic writes, device
meshes, progress bars). It imports nothing from the project, and nothing heavy at import time.
"""
