"""Data benchmarks (pytest-benchmark): decoding an image folder cold, reading it back from
the prepared-data cache, and extracting frozen-backbone features with a small model."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest

from bench.data import load_dataset

SIZE = 32  # output image size of the loading benchmarks


def _n_images(ds) -> int:
    return sum(len(s.labels) for s in ds.splits.values())


@pytest.mark.benchmark(group="data")
def test_load_dataset_cold(benchmark, settings, image_folder, tmp_path):
    cache = tmp_path / "cache"

    def clear_cache():  # every round decodes every image again
        shutil.rmtree(cache, ignore_errors=True)

    ds = benchmark.pedantic(
        lambda: load_dataset(image_folder, SIZE, cache_dir=cache, progress=False),
        setup=clear_cache, warmup_rounds=0, rounds=max(1, min(settings.rounds, 3)))
    n = _n_images(ds)
    benchmark.extra_info.update(images=n, image_size=SIZE, compile_s=0.0,  # nothing compiled
                                img_per_s=n / benchmark.stats.stats.median)
    assert n == 120 and ds.splits["train"].images.shape[1:] == (SIZE, SIZE, 3)


@pytest.mark.benchmark(group="data")
def test_load_dataset_cache_hit(benchmark, settings, image_folder, tmp_path):
    cache = tmp_path / "cache"
    first = load_dataset(image_folder, SIZE, cache_dir=cache, progress=False)  # fills it
    ds = benchmark.pedantic(
        lambda: load_dataset(image_folder, SIZE, cache_dir=cache, progress=False),
        warmup_rounds=settings.warmup, rounds=settings.rounds)
    n = _n_images(ds)
    benchmark.extra_info.update(images=n, image_size=SIZE, compile_s=0.0,  # nothing compiled
                                img_per_s=n / benchmark.stats.stats.median)
    assert np.array_equal(np.asarray(ds.splits["test"].images),
                          np.asarray(first.splits["test"].images))


@pytest.mark.benchmark(group="features")
def test_feature_extraction(benchmark, settings, image_folder, tmp_path):
    import features

    ds = load_dataset(image_folder, SIZE, cache_dir=False, progress=False)
    out = tmp_path / "features"

    def extract():
        return features.extract("resnet20", ds, out, weights=None, batch_size=settings.batch,
                                progress=False, force=True)

    t = time.perf_counter()
    extract()  # cold: compiles the forward
    cold = time.perf_counter() - t
    path = benchmark.pedantic(extract, warmup_rounds=settings.warmup, rounds=settings.rounds)
    n = _n_images(ds)
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(model="resnet20", images=n, batch=settings.batch,
                                img_per_s=n / median, compile_s=max(cold - median, 0.0))
    data = features.load([path])
    x, y = data["train"]
    assert x.shape == (len(ds.splits["train"].labels), 64) and np.isfinite(x).all()
