"""Settings of the pytest-benchmark suite (``pytest tests/benchmarks --benchmark-only``).

Small defaults so that the whole suite runs on a laptop CPU; raise them on an accelerator:

    BENCH_BATCH=8        global batch of the model steps
    BENCH_SIZE=          square input size; default each model's minimum, at least 32
                         (a size below a model's minimum is raised to it)
    BENCH_PRECISION=fp32 or bf16 (mixed precision, see bench.speed)
    BENCH_ROUNDS=5       timed rounds per benchmark (after BENCH_WARMUP untimed ones)
    BENCH_WARMUP=1

    pytest tests/benchmarks --benchmark-only --benchmark-json=/tmp/b.json
    bench compare /tmp/a.json /tmp/b.json    # regressions between two runs
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest

DEFAULT_SIZE = 32  # pixels, when the model accepts it


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        raise pytest.UsageError(f"${name}={value!r}: expected an integer") from None


@dataclasses.dataclass(frozen=True)
class Settings:
    batch: int
    size: int | None  # None: DEFAULT_SIZE
    precision: str
    rounds: int
    warmup: int

    def input_size(self, name: str) -> int:
        """The requested size raised to model ``name``'s minimum input size."""
        import models

        lo = models.get_model_info(name).min_input_size
        return max(self.size or DEFAULT_SIZE, *(lo or (0,)))


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings(batch=env_int("BENCH_BATCH", 8), size=env_int("BENCH_SIZE", 0) or None,
                    precision=os.environ.get("BENCH_PRECISION") or "fp32",
                    rounds=env_int("BENCH_ROUNDS", 5), warmup=env_int("BENCH_WARMUP", 1))


def write_image_folder(root: Path, classes: int = 3, per_class: int = 40,
                       size: int = 48) -> Path:
    """A folder of PNG images, one subfolder per class, for the data-loading benchmarks."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        d = root / f"class{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            img[..., c % 3] = 200  # a class colour, so the images are not pure noise
            Image.fromarray(img).save(d / f"{i:04d}.png")
    return root


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("bench_images") / "images")
