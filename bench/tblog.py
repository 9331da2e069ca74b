"""TensorBoard event files for a run: per-epoch scalars and the run's config as hparams.

Written with tensorboardX (no TensorFlow) straight into the run folder, so
``tensorboard --logdir OUT`` shows every run below ``OUT`` (a zoo run's trained members
included), one TensorBoard run per run folder. Scalars are logged at step = epoch (1-based):

``train/loss``, ``train/accuracy``, ``val/loss``, ``val/accuracy`` (where there is a
validation split), ``lr`` (at the epoch's last step), ``throughput/img_per_s`` (the epoch's
training images over its wall time) and ``throughput/step_ms`` (median step time of the
epoch). A resumed run appends a new event file to the same folder; TensorBoard merges them.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any, Sequence

# The per-epoch row's keys (bench.train's history) and their TensorBoard tags.
EPOCH_TAGS = {"train_loss": "train/loss", "train_accuracy": "train/accuracy",
              "val_loss": "val/loss", "val_accuracy": "val/accuracy", "lr": "lr"}
HPARAM_METRICS = ("val/loss", "val/accuracy", "train/loss", "train/accuracy")
FINAL_METRICS = ("test/accuracy", "test/log_loss")   # written by log_final, at the last epoch


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """Nested config -> ``{"optim.lr": 0.025, ...}`` with values TensorBoard accepts (numbers,
    strings, bools; lists and None as their JSON text)."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, bool) or isinstance(v, (int, float, str)):
            out[key] = v
        else:
            out[key] = json.dumps(v, default=str)
    return out


def _summary_writer():
    """tensorboardX's ``SummaryWriter``, imported without torch where torch is installed but
    not yet imported: tensorboardX imports it at module level only to accept torch tensors
    (bench logs floats), and that costs seconds per run (measured: 5.1 s against 0.8 s
    without, at load average 13 on the 2-core machine)."""
    import sys

    if "tensorboardX" in sys.modules or "torch" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None  # type: ignore[assignment]  # `import torch` -> ImportError
    try:
        from tensorboardX import SummaryWriter
    finally:
        if "torch" in sys.modules and sys.modules["torch"] is None:
            del sys.modules["torch"]
    return SummaryWriter


class RunLog:
    """Event files in ``run_dir``; every method is a no-op after :meth:`close`."""

    def __init__(self, run_dir: str | Path, *, enabled: bool = True):
        self.run_dir = Path(run_dir)
        self._w = None
        if enabled:
            self._w = _summary_writer()(logdir=str(self.run_dir), flush_secs=30)

    def log_epoch(self, row: dict, *, img_per_s: float | None = None,
                  step_times: Sequence[float] = ()) -> None:
        """One epoch's history row (``epoch``, losses, accuracies, ``lr``) plus its speed."""
        if self._w is None:
            return
        step = int(row["epoch"])
        for key, tag in EPOCH_TAGS.items():
            if row.get(key) is not None:
                self._w.add_scalar(tag, float(row[key]), step)
        if img_per_s is not None:
            self._w.add_scalar("throughput/img_per_s", float(img_per_s), step)
        if step_times:
            self._w.add_scalar("throughput/step_ms", 1000 * statistics.median(step_times), step)
        self._w.flush()

    def log_hparams(self, config: dict, metrics: dict[str, float] | None = None) -> None:
        """The run's config (flattened) as hparams, linked to the epoch scalars; ``metrics``
        (e.g. ``{"test/accuracy": 0.9}``) are written as scalars beside them."""
        if self._w is None:
            return
        from tensorboardX.summary import hparams

        metrics = dict(metrics or {})
        names = {m: 0.0 for m in (*HPARAM_METRICS, *FINAL_METRICS, *metrics)}
        exp, ssi, sei = hparams(flatten(config), names)
        fw = self._w.file_writer  # the same events file as the scalars (one TensorBoard run)
        for summary in (exp, ssi, sei):
            fw.add_summary(summary)
        for tag, value in metrics.items():
            if value is not None:
                self._w.add_scalar(tag, float(value), 0)
        self._w.flush()

    def log_final(self, metrics: dict[str, float | None], step: int) -> None:
        """The scored weights' test metrics (``FINAL_METRICS``), at the last epoch."""
        if self._w is None:
            return
        for tag, value in metrics.items():
            if value is not None:
                self._w.add_scalar(tag, float(value), int(step))
        self._w.flush()

    def close(self) -> None:
        if self._w is not None:
            self._w.close()
            self._w = None

    def __enter__(self) -> "RunLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_run(run_dir: str | Path, config: dict, *, enabled: bool = True) -> "RunLog":
    """A run's event writer with its hparams logged (a no-op writer where not ``enabled``:
    the processes of a multi-host run other than the first)."""
    log = RunLog(run_dir, enabled=enabled)
    log.log_hparams(config)
    return log


class StepTrace:
    """``bench train --profile STEPS``: a ``jax.profiler`` trace of STEPS training steps,
    from the second step this process runs (the first may still warm up), written below the
    run folder (``plugins/profile/<time>/``), where TensorBoard's profile plugin and XProf
    find it. Call :meth:`at` before each step, once the previous one has finished."""

    def __init__(self, run_dir: str | Path, steps: int):
        self.run_dir, self.steps = Path(run_dir), int(steps)
        self.start: int | None = None
        self.active = False

    def at(self, step: int) -> None:
        if self.steps <= 0:
            return
        import jax

        if self.start is None:
            self.start = step + 1
        if step == self.start and not self.active:
            jax.profiler.start_trace(str(self.run_dir))
            self.active = True
        elif self.active and step >= self.start + self.steps:
            self.close()

    def close(self) -> None:
        if self.active:
            import jax

            jax.profiler.stop_trace()
            self.active = False
            self.steps = 0
