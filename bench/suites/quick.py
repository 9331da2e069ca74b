"""Named suites: lists of runs that go into one comparison table."""

from __future__ import annotations

from bench.config import RunConfig, make


def quick(dataset: str | None = "digits", *, epochs: int | None = None, seed: int = 0,
          max_per_class: int | None = None) -> list[RunConfig]:
    """The main job: a small CNN and ResNet-20 at 32x32, a few epochs each.

    On the bundled ``digits`` set (1,797 images) both finish in well under 5 minutes on a
    2-core CPU. Hyperparameters follow the reports: the report-003 benchmark CNN with Adam,
    ResNet-20 with SGD+momentum, cosine decay and crop/flip augmentation (He et al. 2015).
    """
    common = dict(dataset=dataset or "digits", image_size=32, seed=seed, max_per_class=max_per_class,
                  patience=0)
    return [
        make(model="benchmark_cnn", epochs=epochs or 15, batch_size=64, optimizer="adam",
                  lr=3e-3, weight_decay=0.0, schedule="cosine", augment="none", **common),
        make(model="resnet20", epochs=epochs or 8, batch_size=64, optimizer="sgd",
                  lr=0.05, momentum=0.9, weight_decay=5e-4, schedule="cosine",
                  warmup_epochs=1.0, augment="crop_flip", **common),
    ]


def run_quick(*, out, quiet: bool, force: bool, cache_dir, seed: int, devices: int | None,
              dataset: str | None = None, epochs: int | None = None,
              max_per_class: int | None = None) -> list[dict]:
    """Train the quick suite's runs into ``out``; their records."""
    from runtime.progress import say

    from bench.train import train

    records = []
    for cfg in quick(dataset, epochs=epochs, seed=seed, max_per_class=max_per_class):
        if devices:
            cfg = cfg.replace(devices=devices)
        say(quiet, f"== {cfg.tag or cfg.model.name} on {cfg.data.dataset}")
        records.append(train(cfg, out, quiet=quiet, force=force, cache_dir=cache_dir))
    return records
