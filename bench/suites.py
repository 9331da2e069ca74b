"""Named suites: lists of runs that go into one comparison table."""

from __future__ import annotations

from .train import RunConfig


def quick(dataset: str = "digits", *, epochs: int | None = None, seed: int = 0,
          max_per_class: int | None = None) -> list[RunConfig]:
    """The main job: a small CNN and ResNet-20 at 32x32, a few epochs each.

    On the bundled ``digits`` set (1,797 images) both finish in well under 5 minutes on a
    2-core CPU. Hyperparameters follow the reports: the report-003 benchmark CNN with Adam,
    ResNet-20 with SGD+momentum, cosine decay and crop/flip augmentation (He et al. 2015).
    """
    common = dict(dataset=dataset, image_size=32, seed=seed, max_per_class=max_per_class,
                  patience=0)
    return [
        RunConfig(model="benchmark_cnn", epochs=epochs or 15, batch_size=64, optimizer="adam",
                  lr=3e-3, weight_decay=0.0, schedule="cosine", augment="none", **common),
        RunConfig(model="resnet20", epochs=epochs or 8, batch_size=64, optimizer="sgd",
                  lr=0.05, momentum=0.9, weight_decay=5e-4, schedule="cosine",
                  warmup_epochs=1.0, augment="crop_flip", **common),
    ]


SUITES = {"quick": quick}


def get_suite(name: str):
    try:
        return SUITES[name]
    except KeyError:
        raise ValueError(f"unknown suite {name!r}; suites: {', '.join(SUITES)}") from None
