"""Suites: named lists of runs (``bench run --suite NAME``), one table at the end.

Each entry says which ``bench run`` options it takes; any other option given is refused
rather than silently ignored.
"""

from __future__ import annotations

import dataclasses
from typing import Callable


@dataclasses.dataclass(frozen=True)
class Suite:
    name: str
    run: Callable  # (*, out, quiet, force, cache_dir, seed, devices, **accepted) -> records | Path
    accepts: tuple[str, ...]
    default_out: str | None = None  # where it writes when --out is left at its default
    help: str = ""


def _quick(**kw):
    from .quick import run_quick

    return run_quick(**kw)


def _seeds(*, out, quiet, force, cache_dir, seed, devices, data_root=None, sections=None,
           epochs=None, max_per_class=None):
    from .seeds import SECTIONS, run_seeds

    if not data_root:
        raise ValueError("--suite seeds needs --data-root (a folder laid out as "
                         "../shared/assets)")
    chosen = (tuple(s.strip() for s in sections.split(",") if s.strip()) if sections
              else SECTIONS)
    overrides = {k: v for k, v in (("epochs", epochs), ("max_per_class", max_per_class))
                 if v is not None}
    return run_seeds(data_root, out, sections=chosen, quiet=quiet, force=force,
                     cache_dir=cache_dir, seed=seed, devices=devices, overrides=overrides)


def _zoo(**kw):
    from .zoo import run_zoo

    return run_zoo(**kw)


SUITES = {
    "quick": Suite("quick", _quick, ("dataset", "epochs", "max_per_class"),
                   help="a small CNN and ResNet-20 at 32x32 on --dataset"),
    "seeds": Suite("seeds", _seeds, ("data_root", "sections", "epochs", "max_per_class"),
                   default_out="results/seeds",
                   help="the five source reports replayed on --data-root"),
    "zoo": Suite("zoo", _zoo, ("dataset", "time_budget", "preset", "max_per_class"),
                 help="scratch, frozen, fine-tuned and ensembled models on --dataset within "
                      "--time-budget: OUT/leaderboard.md and OUT/best/"),
}


def get_suite(name: str) -> Suite:
    try:
        return SUITES[name]
    except KeyError:
        raise ValueError(f"--suite {name!r}: unknown; suites are {', '.join(SUITES)}") from None
