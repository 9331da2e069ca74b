"""Benchmark harness, CLI, data sources and training engine."""


def __getattr__(name):
    # Lazy, so that ``bench --help`` imports neither JAX nor NumPy.
    if name == "load_predictor":
        from .predict import load_predictor

        return load_predictor
    raise AttributeError(f"module 'bench' has no attribute {name!r}")


__all__ = ["load_predictor"]
