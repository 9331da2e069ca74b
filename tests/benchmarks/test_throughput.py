"""Train-step and inference benchmarks of every registered model (pytest-benchmark).

One benchmark group per model family. Each test compiles its step ahead of time (the compile
time goes to ``extra_info['compile_s']``, not into the timings), then times
``settings.rounds`` steps after ``settings.warmup`` untimed ones, each ending in
``block_until_ready``; the result is checked after timing. Sizes: see ``conftest.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import models
from bench.speed import harness as speed


def _params():
    return [pytest.param(name, marks=pytest.mark.benchmark(
                group=models.get_model_info(name).family)) for name in models.list_models()]


def _record(benchmark, prep, phase: str, compile_s: float, flops: float | None) -> None:
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(
        model=prep.name, phase=phase, batch=prep.batch, image_size=prep.image_size,
        precision=prep.precision, params=prep.params, compile_s=compile_s,
        img_per_s=prep.batch / median,
        gflops_per_img=flops / prep.batch / 1e9 if flops else None)


@pytest.mark.parametrize("name", _params())
def test_train_step(benchmark, settings, name):
    prep = speed.prepare(name, settings.batch, settings.input_size(name),
                         precision=settings.precision, infer=False)
    benchmark.pedantic(prep.train_step, warmup_rounds=settings.warmup, rounds=settings.rounds)
    _record(benchmark, prep, "train", prep.train_compile_s, prep.train_flops)
    loss = float(prep.train_step())
    assert math.isfinite(loss), f"{name}: train loss {loss}"


@pytest.mark.parametrize("name", _params())
def test_inference(benchmark, settings, name):
    prep = speed.prepare(name, settings.batch, settings.input_size(name),
                         precision=settings.precision, train=False)
    benchmark.pedantic(prep.infer_step, warmup_rounds=settings.warmup, rounds=settings.rounds)
    _record(benchmark, prep, "infer", prep.infer_compile_s, prep.infer_flops)
    logits = np.asarray(prep.infer_step(), np.float32)
    assert logits.shape == (settings.batch, prep.num_classes)
    assert np.isfinite(logits).all(), f"{name}: non-finite logits"
