"""The zoo suite: every kind of model on your images, within a time budget, one leaderboard.

``bench run --suite zoo --dataset PATH [--time-budget 20m] [--preset fast|best]`` works on
ONE split of the data (the same spec, seed and fractions for every run, so every trained
network and every feature head sees the same train / val / test rows; checked):

* scratch: the report CNNs (``benchmark_cnn``, ``basic_cnn``), ResNet-20 and the small-CNN
  grid's best (``small_cnn`` depth 5 width 128) at the data's resolution (32..64 px), each an
  ordinary resumable ``bench.train.train`` run;
* frozen: pooled features of every pretrained backbone available (EfficientNet-Lite0/1/2,
  and the Keras ImageNet backbones whose files are present) with a logistic head each, plus
  a head on their concatenation (and one on all the backbones extracted, when the planned
  concatenation ran before the last of them). Each head is cross-fit with k folds over
  train+val (every labelled image gets an out-of-fold probability), then refit on all of
  them for the test split and export (AutoGluon's ``refit_full``);
* fine-tuned: the most promising EfficientNet-Lite backbone (lowest validation log-loss of
  the frozen heads run by then; in the priority order below that is Lite0's, the cheapest)
  trained with a dense head on the frozen backbone, then from there its last two stages, and
  all of it (reports 003/004);
* ensembles (``bench.suites.zoo_ensembles``), fit only on predictions their members made for
  images they were not trained on: over the heads, on all their out-of-fold rows; over every
  member, on the validation rows (the networks have honest predictions there only). Bagged
  greedy selection (Caruana et al. 2006) and a top-k average of temperature-scaled members,
  and a stack (logistic on log-probabilities, L2 by CV).

Chosen on validation, reported on test: every row gets a validation log-loss on the same
honest rows (ensembles: their combiner's own out-of-fold predictions); the lowest is the
recommended row, exported to ``OUT/best/``; the test columns are the report, with a paired
bootstrap interval against the recommended row. docs/zoo.md explains the design.

The budget: after the data are loaded, each candidate is probed: a scratch network's train
step is compiled and timed for a few steps, and its eval step; a backbone's forward pass is
compiled and timed on a batch (feature extraction), and the fine-tuning stages' steps are
scaled from Lite0's forward pass (``FT_STEP_FACTOR``: compiling an EfficientNet train step
alone takes about a minute on a busy 2-core CPU) plus a measured random initialisation. The
plan takes candidates in priority order (one of each kind first) at their fewest epochs
while they fit, then adds epochs; the rest wait in reserve. Before each stage its estimate,
scaled by how far the finished stages' estimates were off (0.5x..3x), is checked against the
time left: a stage that no longer fits runs fewer epochs or is skipped, one that finds spare
time takes a share of it as more epochs, and reserve candidates run while they fit; what is
skipped is listed with the reason. The plan and every
decision are saved (``OUT/zoo/plan.json``, ``OUT/zoo/state.json``), so a killed run, rerun
with the same command, resumes with the same plan: finished runs and heads are reused, a run
in progress resumes from its last epoch, features are cached.

Writes ``OUT/leaderboard.md``, ``.csv``, ``.html`` (a fragment for ``report.html``),
``OUT/leaderboard_pareto.png``, ``OUT/zoo.json`` and the recommended row's exported
predictor in ``OUT/best/`` (``bench predict``, ``bench.load_predictor``). ``run_zoo`` is its
stages: ``open_run``, ``load_data``, ``plan_stage`` (probe, budget), ``run_candidates`` (a
kind of candidate is a runner in ``RUNNERS``, a probe in ``PROBES`` and its items in
``candidates``), ``ensemble_stage`` and ``board_stage``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from pathlib import Path
from types import SimpleNamespace
import numpy as np

from runtime import io as bio
from runtime.progress import say

from ..report.leaderboard import fmt_s, slug, write_leaderboard

ZOO_VERSION = 2  # 2: heads out-of-fold over train+val and refit; level-1 on honest rows
DEFAULT_BUDGET_S = 20 * 60
MARGIN = 0.06  # share of the budget kept back for timing noise
LITE = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
KINDS = ("scratch", "frozen", "fine-tuned", "ensemble")
# How the combiners are fit (recorded in plan.json and zoo.json; docs/zoo.md explains it).
LEVEL1_DESIGN = {
    "heads": "k-fold out-of-fold over train+val (the C search's folds, k = head_cv), then "
             "refit on train+val for test and export",
    "networks": "validation predictions only (trained on train)",
    "level1_rows": "per combiner, the labelled rows every member has an honest prediction "
                   "for: the validation rows once a network is a member; all of train+val for "
                   "the heads alone (while the best member on validation is a head)",
    "combiners": "bagged greedy selection (Caruana 2006, sorted init, with replacement) and "
                 "top-k average on temperature-scaled members; stack on log-probabilities "
                 "with L2 by CV",
    "val_log_loss": "every row on the same labelled rows, those all rows have honest "
                    "predictions for (members: out-of-fold or validation; ensembles: the "
                    "combiner's own 5-fold out-of-fold predictions over its fit rows)",
    "recommended": "lowest val_log_loss; exported to best/",
}

PRESETS = {
    # scratch models: (model, model_args, augment); epochs (min, max) per kind.
    "fast": dict(scratch=(("benchmark_cnn", (), "none"), ("resnet20", (), "flip")),
                 backbones=LITE[:2], keras=False, scratch_size=(32, 32), feature_size=96,
                 finetune_size=64, scratch_epochs=(2, 10), finetune_epochs=None,
                 finetune_last_k=2, finetune_all=False, head_cv=3, head_cs=4),
    "best": dict(scratch=(("benchmark_cnn", (), "none"), ("resnet20", (), "flip"),
                          ("small_cnn", (("depth", 5), ("width", 128)), "flip"),
                          ("basic_cnn", (), "none")),
                 backbones=LITE, keras=True, scratch_size=(32, 64), feature_size=224,
                 finetune_size=128, scratch_epochs=(2, 15), finetune_epochs=(1, 3),
                 finetune_last_k=2, finetune_all=True, head_cv=5, head_cs=6),
}


def parse_budget(text) -> float:
    """``'20m'``, ``'90s'``, ``'1.5h'``, ``'1h30m'`` or plain seconds -> seconds."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        s = str(text).strip().lower().replace(" ", "")
        parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?:in)?)?"
                             r"(?:(\d+(?:\.\d+)?)s?)?", s)
        if not s or parts is None or not any(parts.groups()):
            raise ValueError(f"--time-budget {text!r}: expected a duration such as 20m, 90s, "
                             f"1h30m or a number of seconds")
        h, m, sec = (float(g) if g else 0.0 for g in parts.groups())
        value = 3600 * h + 60 * m + sec
    if not value > 0:
        raise ValueError(f"--time-budget {text!r}: must be more than 0 seconds")
    return value


class _Fill(dict):
    def __missing__(self, key):
        return {"backbone": "(best backbone)", "backbones": "..."}.get(key, "{" + key + "}")


def label(name: str, **values) -> str:
    """A stage name with its ``{backbone}`` / ``{backbones}`` filled in where known."""
    return name.format_map(_Fill({k: v for k, v in values.items() if v}))


# ---------------------------------------------------------------------------------------------
# Candidates


@dataclasses.dataclass
class Item:
    """One stage of the plan: a trained run, a feature head, or a concatenated head."""

    name: str
    kind: str            # scratch / frozen / fine-tuned
    type: str            # train / head / concat
    model: str = ""
    size: int = 0
    epochs: tuple[int, int] = (1, 1)
    model_args: tuple = ()
    augment: str = "none"
    after: str = ""      # the item this one starts from (fine-tuning)
    freeze: str | None = None
    backbones: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def candidates(preset: dict, num_classes: int, sizes: dict) -> tuple[list[Item], list[dict]]:
    """The preset's candidates in priority order, and the backbones left out (with why)."""
    import models

    S, F, T = sizes["scratch"], sizes["feature"], sizes["finetune"]
    backbones = list(preset["backbones"])
    skipped = []
    if preset["keras"]:
        for name in models.list_models():
            info = models.get_model_info(name)
            if name in LITE or "imagenet" not in info.pretrained:
                continue
            try:
                models.resolve_pretrained(info, "imagenet")
                backbones.append(name)
            except (FileNotFoundError, ValueError) as e:
                skipped.append({"name": f"{name} features + logistic head", "kind": "frozen",
                                "reason": f"no ImageNet weights file ({str(e).splitlines()[0]})"})
    heads = [Item(f"{b} features + logistic head", "frozen", "head", model=b, size=F,
                  backbones=(b,)) for b in backbones]
    scratch = [Item(f"{m}" + (" " + " ".join(f"{k[0]}{v}" for k, v in args) if args else "")
                    + f" {S}px", "scratch", "train", model=m, size=S,
                    epochs=tuple(preset["scratch_epochs"]), model_args=args, augment=aug)
               for m, args, aug in preset["scratch"]]
    ft = []
    ep = tuple(preset["finetune_epochs"] or (0, 0))
    k = preset["finetune_last_k"]
    ft.append(Item("{backbone} frozen + trained dense head", "frozen", "train", model="auto",
                   size=T, epochs=ep, augment="flip", freeze="backbone"))
    ft.append(Item(f"{{backbone}} fine-tuned (last {k} stages)", "fine-tuned", "train",
                   model="auto", size=T, epochs=ep, augment="flip", after=ft[0].name,
                   freeze=f"last{k}"))
    if not preset["finetune_epochs"]:
        ft = []
    elif preset["finetune_all"]:
        ft.append(Item("{backbone} fine-tuned (all layers)", "fine-tuned", "train",
                       model="auto", size=T, epochs=ep, augment="flip", after=ft[0].name))
    concat = []
    if len(backbones) > 1:
        concat.append(Item("concat({backbones}) features + logistic head", "frozen", "concat",
                           size=F, backbones=tuple(backbones)))
    # Priority: one of each kind first, then the rest.
    order = heads[:1] + scratch[:1] + ft[:2] + heads[1:2] + scratch[1:2] + concat + heads[2:3] \
        + scratch[2:] + ft[2:] + heads[3:]
    if not preset["backbones"]:
        order = [it for it in order if it.model != "auto"]
    return order, skipped


def train_config(item: Item, spec: str, seed: int, max_per_class, epochs: int,
                 backbone: str | None = None):
    from bench.config import make

    model = backbone if item.model == "auto" else item.model
    pretrained = item.model == "auto"
    return make(model=model, dataset=spec, image_size=item.size, seed=seed,
                max_per_class=max_per_class, epochs=epochs, batch_size=32, optimizer="adam",
                lr=1e-3, weight_decay=0.0, schedule="constant", warmup_epochs=0.0,
                augment=item.augment, patience=0, eval_batch_size=64,
                weights="imagenet" if pretrained else None,
                freeze=item.freeze if item.freeze == "backbone" else None,
                tag=label(item.name, backbone=backbone or model),
                **({"model_arg": tuple(tuple(a) for a in item.model_args)}
                   if item.model_args else {}))


def _stage_freeze(backbone: str, num_classes: int, freeze: str | None) -> str | None:
    """'lastK' -> the block after which training starts (the last K stages, head_conv and
    the head train), as ``bench/suites/seeds.py`` section 004 does."""
    if not freeze or not freeze.startswith("last"):
        return freeze
    import models
    from flax import nnx

    k = int(freeze[4:])
    blocks = nnx.eval_shape(lambda: models.create_model(backbone, num_classes=num_classes)
                            ).block_names()
    stages = [b for b in blocks if b.startswith("stage")]
    return stages[-k - 1]


# ---------------------------------------------------------------------------------------------
# Probes


def probe_train(cfg, num_classes: int, n_probe: int = 3) -> dict:
    """Compile ``cfg``'s train and eval steps (random weights: the cost is the same) on a
    synthetic batch and time a few steps: the cost of one step and one eval batch."""
    import jax
    from flax import nnx

    import models
    from bench import engine
    from bench.train import build_model

    info = models.get_model_info(cfg.model.name)
    size = cfg.data.image_size
    shim = SimpleNamespace(image_size=(size, size), classes=list(range(num_classes)))
    t_all = time.perf_counter()
    model = build_model(cfg.replace(weights=None, init_from=None), shim)
    build_s = time.perf_counter() - t_all
    mesh = engine.Mesh.create(cfg.devices)
    schedule = engine.make_schedule(cfg.optim, 10, cfg.optim.epochs)
    params = nnx.as_pure(nnx.state(model, nnx.Param))
    freeze = cfg.model.freeze
    mask = engine.freeze_mask(model, params, freeze)
    tx = engine.make_optimizer(cfg.optim, schedule, mask)
    steps = engine.build_steps(model, tx, num_classes=num_classes,
                               preprocessing=info.preprocessing, augment=cfg.augment,
                               label_smoothing=cfg.optim.label_smoothing, mesh=mesh,
                               freeze=freeze, trainable_mask=mask, precision=cfg.precision)
    state = engine.replicate(engine.init_state(model, tx), mesh)
    params_total = models.param_count(model)["total"]
    del model
    b = cfg.optim.batch_size - cfg.optim.batch_size % mesh.n
    rng = np.random.default_rng(0)
    x_all = engine.to_global(rng.integers(0, 256, (b, size, size, 3), np.uint8), mesh.replicated)
    y_all = engine.to_global(rng.integers(0, num_classes, b).astype(np.int32), mesh.replicated)
    idx = engine.to_global(np.arange(b, dtype=np.int32), mesh.data)
    key = jax.random.key(0)
    t0 = time.perf_counter()
    train = steps.train.lower(state, x_all, y_all, idx, key).compile()
    compile_s = time.perf_counter() - t0
    times = []
    for i in range(n_probe + 1):
        s0 = time.perf_counter()
        state, m = train(state, x_all, y_all, idx, key)
        float(m["loss"])
        times.append(time.perf_counter() - s0)
    eb = cfg.eval_batch_size
    xe = engine.to_global(rng.integers(0, 256, (eb, size, size, 3), np.uint8), mesh.data)
    e0 = time.perf_counter()
    steps.eval(state, xe).block_until_ready()
    eval_compile_s = time.perf_counter() - e0
    e1 = time.perf_counter()
    steps.eval(state, xe).block_until_ready()
    eval_s = time.perf_counter() - e1
    jax.clear_caches()
    return {"step_s": float(np.median(times[1:])), "batch": b, "compile_s": compile_s,
            "eval_batch_s": eval_s, "eval_batch": eb, "eval_compile_s": eval_compile_s,
            "build_s": build_s, "params": params_total, "probe_s": time.perf_counter() - t_all}


def probe_features(backbone: str, size: int, batch: int = 64) -> dict:
    """Compile the feature-extraction forward pass of ``backbone`` at ``size`` and time a
    batch: images per second of extraction."""
    import jax

    import features.extraction as fx
    import models

    t_all = time.perf_counter()
    model = cached_backbone(backbone)
    build_s = time.perf_counter() - t_all
    model.eval()
    params_total = models.param_count(model)["total"]
    forward, state, sharding = fx._compile_forward(backbone, model, jax.local_devices()[:1],
                                                   (size, size))
    x = jax.device_put(np.random.default_rng(0).integers(0, 256, (batch, size, size, 3),
                                                         np.uint8), sharding)
    t0 = time.perf_counter()
    np.asarray(forward(state, x))
    compile_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    np.asarray(forward(state, x))
    batch_s = time.perf_counter() - t1
    return {"img_per_s": batch / batch_s, "compile_s": max(0.0, compile_s - batch_s),
            "build_s": build_s, "params": params_total, "probe_s": time.perf_counter() - t_all}


_BUILT: dict = {}


def cached_backbone(name: str):
    """The ImageNet backbone ``name`` (no head), built once per process (the probe's model is
    the one that extracts, and its compiled forward pass is reused)."""
    if name not in _BUILT:
        import models

        _BUILT[name] = models.create_model(name, num_classes=0, weights="imagenet")
    return _BUILT[name]


def probe_build(name: str) -> float:
    """Seconds ``models.create_model`` takes for ``name`` with random weights (what a
    training run of it spends before its first step)."""
    import models

    t0 = time.perf_counter()
    models.create_model(name, num_classes=2, seed=0)
    return time.perf_counter() - t0


# Training-step cost relative to the forward pass (per image), and compile time relative to
# the forward pass's, for the fine-tuning stages (the backward pass of what trains).
FT_STEP_FACTOR = {"backbone": 1.3, "last": 2.3, None: 3.0}
FT_COMPILE_FACTOR = {"backbone": 3.0, "last": 5.0, None: 5.0}


def finetune_probe(fwd: dict, freeze: str | None, batch: int = 32, eval_batch: int = 64) -> dict:
    """A fine-tuning stage's step costs from its backbone's measured forward pass."""
    if "error" in fwd:
        return fwd
    f = "last" if freeze and freeze.startswith("last") else freeze
    per_img = 1.0 / fwd["img_per_s"]
    return {"step_s": FT_STEP_FACTOR[f] * batch * per_img, "batch": batch,
            "compile_s": FT_COMPILE_FACTOR[f] * fwd["compile_s"], "eval_batch": eval_batch,
            "eval_batch_s": eval_batch * per_img, "eval_compile_s": fwd["compile_s"],
            "build_s": fwd.get("build_s_random", 0.0),
            "from": f"forward pass at this size, training step x{FT_STEP_FACTOR[f]}, compile "
                    f"x{FT_COMPILE_FACTOR[f]}"}


def estimate(item: Item, probe: dict, n: dict, epochs: int, num_classes: int,
             head_work: float = 1.0) -> float:
    """Seconds ``item`` should take at ``epochs`` (train) from its probe and the split sizes."""
    if item.type == "train":
        steps = max(1, n["train"] // probe["batch"])
        eval_batches = math.ceil(n["val"] / probe["eval_batch"])
        test_batches = math.ceil(n["test"] / probe["eval_batch"])
        per_epoch = steps * probe["step_s"] + eval_batches * probe["eval_batch_s"]
        # Fixed: building the model and the near-duplicate check (~5 s), the two compiles,
        # the test pass, saving.
        return (5.0 + probe.get("build_s", 0.0) + probe["compile_s"] + probe["eval_compile_s"]
                + epochs * per_epoch
                + test_batches * probe["eval_batch_s"])
    total = n["train"] + n["val"] + n["test"]
    head = 3.0 + 4e-6 * head_work * n["train"] * probe.get("dim", 1280) * max(num_classes, 2)
    if item.type == "head":
        return (3.0 + probe.get("build_s", 0.0) + probe["compile_s"] + total / probe["img_per_s"]
                + head)
    return head * 1.5  # concat: the features are there already


# ---------------------------------------------------------------------------------------------
# The run


class Clock:
    """The budget across invocations: ``spent`` seconds of earlier ones are carried over."""

    def __init__(self, budget: float, spent: float):
        self.budget, self.t0, self.spent0 = budget, time.perf_counter(), spent

    def used(self) -> float:
        return self.spent0 + time.perf_counter() - self.t0

    def left(self) -> float:
        return self.budget - self.used()


@dataclasses.dataclass
class Run:
    """One invocation: its settings, the saved state (``zoo/state.json``) and the clock."""

    out: Path
    spec: str
    P: dict
    preset: str
    budget: float
    key: dict
    st: dict
    clock: Clock
    seed: int = 0
    quiet: bool = False
    force: bool = False
    cache_dir: str | None = None
    devices: int | None = None
    max_per_class: int | None = None

    @property
    def zdir(self) -> Path:
        return self.out / "zoo"

    def save(self) -> None:
        """Write the state (decisions, stages, seconds spent) atomically."""
        self.st["spent_s"] = self.clock.used()
        bio.write_json(self.zdir / "state.json", self.st)

    def progress(self, msg: str) -> None:
        say(self.quiet, f"[zoo {fmt_s(self.clock.used())} of {fmt_s(self.budget)}, "
                        f"{fmt_s(self.clock.left())} left] {msg}")


@dataclasses.dataclass
class Data:
    """The one split at each size, and its counts."""

    ds: dict
    sizes: dict
    n: dict
    num_classes: int

    @property
    def first(self):
        return self.ds[self.sizes["scratch"]]


def run_zoo(*, out, quiet: bool = False, force: bool = False, cache_dir=None, seed: int = 0,
            devices: int | None = None, dataset: str | None = None, time_budget=None,
            preset: str | dict | None = None, max_per_class: int | None = None) -> Path:
    """Run the zoo suite into ``out``; returns the leaderboard's path.

    ``preset``: ``'fast'``, ``'best'`` or a dict overriding the fast preset's keys (a custom
    candidate set; tests use a tiny one). The stages: ``open_run``, ``load_data``,
    ``plan_stage`` (probe, budget), ``run_candidates``, ``ensemble_stage``, ``board_stage``.
    """
    run = open_run(out=out, quiet=quiet, force=force, cache_dir=cache_dir, seed=seed,
                   devices=devices, dataset=dataset, time_budget=time_budget, preset=preset,
                   max_per_class=max_per_class)
    data = load_data(run)
    plan = plan_stage(run, data)
    rows = run_candidates(run, data, plan)
    t0 = time.perf_counter()
    ens = ensemble_stage(run, rows)
    return board_stage(run, data, plan, list(rows.values()) + ens, t0)


def open_run(*, out, quiet, force, cache_dir, seed, devices, dataset, time_budget, preset,
             max_per_class) -> Run:
    """Resolve the preset and budget, and load the saved state when it is this run's."""
    if not dataset:
        raise ValueError("--suite zoo needs --dataset (a folder or .zip of images, 'digits' or "
                         "tfds:NAME)")
    preset = preset or "best"
    if isinstance(preset, dict):  # a custom candidate set (library use, tests)
        P, preset = {**PRESETS["fast"], **preset}, preset.get("name", "custom")
    elif preset in PRESETS:
        P = PRESETS[preset]
    else:
        raise ValueError(f"--preset {preset!r}: expected one of {', '.join(PRESETS)}")
    budget = parse_budget(time_budget if time_budget is not None else DEFAULT_BUDGET_S)
    out, spec = Path(out), str(dataset)
    key = {"version": ZOO_VERSION, "dataset": spec, "budget_s": budget, "preset": preset,
           "seed": seed, "max_per_class": max_per_class,
           "candidates": json.dumps(P, sort_keys=True, default=str)}
    state_path = out / "zoo" / "state.json"
    st = bio.read_json(state_path) if state_path.exists() and not force else {}
    if st.get("key") != key:
        st = {"key": key, "spent_s": 0.0, "stages": {}, "decisions": {}}
    return Run(out=out, spec=spec, P=P, preset=preset, budget=budget, key=key, st=st,
               clock=Clock(budget, st["spent_s"]), seed=seed, quiet=quiet, force=force,
               cache_dir=cache_dir, devices=devices, max_per_class=max_per_class)


def load_data(run: Run) -> Data:
    """Load the one split at the scratch, feature and fine-tuning sizes; check they agree."""
    from bench.data import load_dataset, peek_image_size

    t0 = time.perf_counter()
    native = peek_image_size(run.spec) or 32
    lo, hi = run.P["scratch_size"]
    S = int(min(hi, max(lo, native)))
    F = int(min(run.P["feature_size"], max(min(64, run.P["feature_size"]), native)))
    T = int(min(run.P["finetune_size"], F))
    sizes = {"scratch": S, "feature": F, "finetune": T}
    run.progress(f"stage data: {run.spec} at {S} px (scratch), {F} px (features), {T} px "
                 f"(fine-tuning); preset {run.preset}")
    ds = {s: load_dataset(run.spec, s, cache_dir=run.cache_dir, seed=run.seed,
                          progress=not run.quiet, max_per_class=run.max_per_class)
          for s in sorted(set(sizes.values()))}
    first = ds[S]
    for s, d in ds.items():
        if d.fingerprint != first.fingerprint or any(
                not np.array_equal(d.splits[k].labels, first.splits[k].labels)
                for k in ("train", "val", "test")):
            raise ValueError(f"{run.spec}: the split at {s} px differs from the one at {S} px")
    n = {k: len(first.splits[k].labels) for k in ("train", "val", "test")}
    if min(n.values()) == 0:
        raise ValueError(f"--dataset {run.spec}: the zoo needs train, val and test images; got "
                         f"train/val/test {n['train']}/{n['val']}/{n['test']}")
    if "near_duplicates" not in run.st:
        from bench.inspect import cross_split_near_duplicates

        pairs = cross_split_near_duplicates(first)
        run.st["near_duplicates"] = {
            f"{a}-{b}": sum(1 for p in pairs if {p.split_a, p.split_b} == {a, b})
            for a, b in (("train", "val"), ("train", "test"), ("val", "test"))}
    _record_stage(run.st, "data", None, time.perf_counter() - t0)
    run.save()
    return Data(ds=ds, sizes=sizes, n=n, num_classes=len(first.classes))


def plan_stage(run: Run, data: Data) -> dict:
    """Probe every candidate and plan the budget (or reuse the saved plan of this run)."""
    plan_path = run.zdir / "plan.json"
    if plan_path.exists() and not run.force and bio.read_json(plan_path).get("key") == run.key:
        plan = bio.read_json(plan_path)
        run.progress(f"plan: reusing {plan_path} (made {plan['made']})")
    else:
        t0 = time.perf_counter()
        order, skipped = candidates(run.P, data.num_classes, data.sizes)
        probes: dict = {}
        for it in order:
            pkey = _probe_key(it)
            if it.type in PROBES and pkey not in probes:
                run.progress(f"stage probe: {pkey}")
                try:
                    PROBES[it.type](run, it, data, probes)
                except Exception as e:  # a candidate that cannot even be built is skipped
                    probes[pkey] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0]}"}
        plan = make_plan(order, skipped, probes, data.n, data.num_classes,
                         available=run.clock.left() - run.budget * MARGIN
                         - final_estimate(data.n, order, data.num_classes),
                         head_work=(run.P["head_cv"] + 1) * run.P["head_cs"] / 36)
        plan.update(key=run.key, sizes=data.sizes, made=time.strftime("%Y-%m-%dT%H:%M:%S"),
                    probe_s=time.perf_counter() - t0, probes=probes, level1=LEVEL1_DESIGN)
        bio.write_json(plan_path, plan)
        _record_stage(run.st, "probe", None, time.perf_counter() - t0)
        run.save()
    _print_plan(plan, run.progress)
    return plan


def _probe_head(run: Run, it: Item, data: Data, probes: dict) -> None:
    """A backbone's feature extraction: its forward pass compiled and timed."""
    probes[_probe_key(it)] = probe_features(it.model, it.size)


def _probe_training(run: Run, it: Item, data: Data, probes: dict) -> None:
    """A training run's steps: measured (scratch), or scaled from Lite0's forward pass
    (fine-tuning: compiling an EfficientNet train step takes a minute on a busy 2-core CPU)."""
    if it.model == "auto":
        fkey = f"features:{LITE[0]}@{it.size}"
        if fkey not in probes:
            probes[fkey] = probe_features(LITE[0], it.size)
        if "build_s_random" not in probes[fkey]:
            probes[fkey]["build_s_random"] = probe_build(LITE[0])
        probes[_probe_key(it)] = finetune_probe(probes[fkey], it.freeze)
        return
    cfg = train_config(it, run.spec, run.seed, run.max_per_class, 1, backbone=it.model)
    if it.freeze and it.freeze.startswith("last"):
        cfg = cfg.replace(freeze=_stage_freeze(it.model, data.num_classes, it.freeze))
    probes[_probe_key(it)] = probe_train(cfg, data.num_classes)


def run_candidates(run: Run, data: Data, plan: dict) -> dict[str, dict]:
    """Each planned (then reserve) candidate in order, its epochs fitted to the time left;
    returns the member rows by item name."""
    rows: dict[str, dict] = {}
    track = {"est": 0.0, "act": 0.0}
    items = [Item(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
             for d in plan["items"] + plan.get("reserve", [])]
    final_s = final_estimate(data.n, items, data.num_classes)
    for i, it in enumerate(items):
        dec = run.st["decisions"].get(it.name)
        if dec and dec.get("skipped"):
            continue
        it = _resolve(run, it, rows)
        if it is None:
            continue
        epochs, est = _choose_epochs(run, data, plan, items, i, it, track, final_s)
        if epochs is None:
            continue
        bb = run.st["decisions"].get("backbone")
        name = label(it.name, backbone=bb, backbones=_short(it.backbones))
        eta = sum(plan["estimates"].get(x.name, 0.0) for x in items[i:]
                  if x.name in plan["epochs"]
                  and not run.st["decisions"].get(x.name, {}).get("skipped")) + final_s
        run.progress(f"stage {i + 1}/{len(items)} {name} ({it.kind}"
                     + (f", {epochs} epochs" if it.type == "train" else "")
                     + f"): estimate {fmt_s(est)}; ETA all {fmt_s(eta)}")
        t0 = time.perf_counter()
        rows[it.name] = _member(RUNNERS[it.type](run, it, data, rows, epochs, bb), name)
        took = time.perf_counter() - t0
        d = run.st["decisions"][it.name]
        track["est"] += d.get("raw_s", d["estimate_s"])
        track["act"] += took
        _record_stage(run.st, name, d["estimate_s"], took)
        run.save()
    _concat_all(run, data, rows)
    return rows


def _short(backbones) -> str:
    return ",".join(b.replace("efficientnet_", "") for b in backbones)


def _member(row: dict, name: str) -> dict:
    """A runner's row with its name and its validation score: log-loss over the rows it has
    honest (out-of-fold or validation) predictions for."""
    from ensembles import log_loss

    row["name"] = name
    row["val_log_loss"] = log_loss(row["y_oof"], row["oof"])
    row["val_rows"] = len(row["oof_ids"])
    return row


def _resolve(run: Run, it: Item, rows: dict) -> Item | None:
    """``it`` ready to run (the fine-tuning backbone chosen, a concat's backbones filled in),
    or None when what it needs did not run (recorded as skipped)."""
    dec = run.st["decisions"]
    if it.after and it.after not in rows:
        _skip(run.st, it, f"needs '{label(it.after, backbone=dec.get('backbone'))}', "
                          f"which did not run", run.save)
        return None
    if it.model == "auto" and dec.get("backbone") is None:
        heads = [r for r in rows.values() if r["kind"] == "frozen" and r.get("backbones")
                 and len(r["backbones"]) == 1 and r["backbones"][0] in LITE]
        if not heads:
            _skip(run.st, it, "no frozen EfficientNet-Lite head to choose a backbone from",
                  run.save)
            return None
        best = min(heads, key=lambda r: r["val_log_loss"])
        dec["backbone"] = best["backbones"][0]
        run.progress(f"fine-tuning {dec['backbone']}: its frozen head has the lowest "
                     f"validation log-loss ({best['val_log_loss']:.4f})")
    if it.type == "concat":
        done = _single_heads(rows)
        if len(done) < 2:
            _skip(run.st, it, "fewer than 2 backbones' features ran", run.save)
            return None
        it = dataclasses.replace(it, backbones=tuple(done))
    return it


def _single_heads(rows: dict) -> list[str]:
    return [r["backbones"][0] for r in rows.values()
            if r["source"]["type"] == "head" and len(r["backbones"]) == 1]


def _choose_epochs(run: Run, data: Data, plan: dict, items: list, i: int, it: Item,
                   track: dict, final_s: float) -> tuple[int | None, float]:
    """Epochs for ``it`` from its estimate, scaled by how far the finished stages' were off,
    and the time left (fewer, or more from spare time); (None, est) when it is skipped."""
    n, st = data.n, run.st
    est = it_est = plan["estimates"].get(it.name) or estimate(
        it, plan["probes"].get(_probe_key(it), {}), n, it.epochs[0], data.num_classes)
    epochs = plan["epochs"].get(it.name, it.epochs[0])
    dec = st["decisions"].get(it.name)
    if dec and "epochs" in dec:  # started before: keep what was decided
        return dec["epochs"], dec["estimate_s"]
    ratio = min(3.0, max(0.5, track["act"] / track["est"])) if track["est"] > 30 else 1.0
    left = run.clock.left() - run.budget * MARGIN / 2 - final_s
    probe = plan["probes"].get(_probe_key(it), {})
    scale = _backbone_scale(plan, it, st["decisions"].get("backbone"))
    est = it_est * ratio * scale

    def cost(e):
        return estimate(it, probe, n, e, data.num_classes) * ratio * scale

    if est > left and it.type == "train":
        while epochs > it.epochs[0] and est > left:
            epochs -= 1
            est = cost(epochs)
    # Ahead of the plan: a share of the spare time buys this run more epochs.
    later = [x for x in items[i + 1:] if not st["decisions"].get(x.name, {}).get("skipped")]
    ahead = left - est - ratio * sum(plan["estimates"].get(x.name, 0.0) for x in later)
    share = ahead / max(1, 1 + sum(1 for x in later if x.type == "train"
                                   or x.name not in plan["epochs"]))
    base = est
    while it.type == "train" and epochs < it.epochs[1] and share > 0:
        nxt = cost(epochs + 1)
        if nxt - base > share:
            break
        epochs, est = epochs + 1, nxt
    if est > left:
        _skip(st, it, f"budget: needs ~{fmt_s(est)}, {fmt_s(max(left, 0))} left", run.save)
        run.progress(f"skip {label(it.name, backbone=st['decisions'].get('backbone'))}: "
                     f"needs ~{fmt_s(est)}, {fmt_s(max(left, 0))} left")
        return None, est
    st["decisions"][it.name] = {"epochs": epochs, "estimate_s": est,
                                "raw_s": est / (ratio * scale)}
    run.save()
    return epochs, est


def _concat_all(run: Run, data: Data, rows: dict) -> None:
    """A head on the concatenation of every backbone extracted, when no concat row has them
    all (the planned concat runs with the backbones done by its turn): features are cached,
    so it costs a head fit."""
    done = _single_heads(rows)
    if len(done) < 2 or any(r["source"]["type"] == "head" and set(r["backbones"]) == set(done)
                            for r in rows.values()):
        return
    it = Item("concat(all {backbones}) features + logistic head", "frozen", "concat",
              size=data.sizes["feature"], backbones=tuple(done))
    est = estimate(it, {"dim": 1280 * len(done)}, data.n, 0, data.num_classes,
                   (run.P["head_cv"] + 1) * run.P["head_cs"] / 36)
    left = run.clock.left() - run.budget * MARGIN / 2
    fitted = all(p.exists() for p in _head_paths(run, it))  # reused whatever the time left
    if it.name not in run.st["decisions"] and est > left and not fitted:
        _skip(run.st, it, f"budget: needs ~{fmt_s(est)}, {fmt_s(max(left, 0))} left", run.save)
    if run.st["decisions"].get(it.name, {}).get("skipped"):
        return
    run.st["decisions"][it.name] = {"estimate_s": est}
    t0 = time.perf_counter()
    name = label(it.name, backbones=_short(done))
    rows[it.name] = _member(_run_head(run, it, data, rows, 0, None), name)
    _record_stage(run.st, name, None, time.perf_counter() - t0)
    run.save()


def ensemble_stage(run: Run, rows: dict) -> list[dict]:
    """The combiners over the member rows (``bench.suites.zoo_ensembles``)."""
    from .zoo_ensembles import ensemble_rows

    members = list(rows.values())
    run.progress("stage ensembles: bagged greedy selection, top-k average, stack (fit on "
                 "out-of-fold rows where every member has them, else validation rows)")
    for r in members:
        if not np.array_equal(r["y_test"], members[0]["y_test"]):
            raise ValueError(f"{r['name']}: its test labels are not those of "
                             f"{members[0]['name']} (the splits differ)")
    run.st["ensembles_skipped"] = []
    return ensemble_rows(members, run.zdir, run.seed, run.st["ensembles_skipped"]) \
        if len(members) >= 2 else []


def board_stage(run: Run, data: Data, plan: dict, rows: list[dict], t0: float) -> Path:
    """The leaderboard (ranked by validation log-loss) and the recommended row's export."""
    from bench.predict import export

    final_s = final_estimate(data.n, plan["items"] + plan.get("reserve", []), data.num_classes)
    board = leaderboard(rows, data.first, run.st, plan, run.budget, run.preset, run.spec)
    board["stages"], board["wall_s"] = run.st["stages"], run.clock.used()
    write_leaderboard(run.out, board)
    rec = next(r for r in board["rows"] if r["recommended"])
    export(run.out, rec["name"], run.out / "best")
    run.progress(f"exported the recommended row ({rec['name']}: lowest validation log-loss "
                 f"{rec['val_log_loss']:.4f}) to {run.out / 'best'}")
    _record_stage(run.st, "ensembles, leaderboard, export", final_s, time.perf_counter() - t0)
    run.save()
    board["stages"], board["wall_s"] = run.st["stages"], run.clock.used()
    path = write_leaderboard(run.out, board)
    run.progress(f"done: {path}")
    return path


def _probe_key(it: Item) -> str:
    if it.type == "head":
        return f"features:{it.model}@{it.size}"
    return f"train:{it.name}"


def _backbone_scale(plan: dict, it: Item, backbone: str | None) -> float:
    """A fine-tuning estimate is probed on EfficientNet-Lite0; another backbone costs its
    extraction time relative to Lite0's (both measured by the feature probes)."""
    if it.model != "auto" or not backbone or backbone == LITE[0]:
        return 1.0
    F = plan["sizes"]["feature"]
    a = plan["probes"].get(f"features:{LITE[0]}@{F}", {}).get("img_per_s")
    b = plan["probes"].get(f"features:{backbone}@{F}", {}).get("img_per_s")
    return a / b if a and b else 1.0


def final_estimate(n: dict, items, num_classes: int = 2) -> float:
    """Ensembles, leaderboard, plot and export: per group, each combiner fit and cross-fit
    (the stack's two forms' CV paths: about 480 small fits), and writing the recommended
    predictor (a backbone's weights at most). Measured on the busy 2-core CPU, CIFAR-10
    subset, 2,000 labelled rows, 5 members, 10 classes: 81 s before the stack's pool fits
    were held to one BLAS thread; a whole resumed run (data, boards, export) 46 s after."""
    m = len(items)

    def group(rows):
        return 480 * (1e-6 * rows * m * max(num_classes, 2) + 0.01)

    return 15.0 + 0.3 * (m + 6) + group(n["train"] + n["val"]) + group(n["val"])


def make_plan(order: list[Item], skipped: list[dict], probes: dict, n: dict, num_classes: int,
              available: float, head_work: float = 1.0) -> dict:
    """Each candidate at its fewest epochs in priority order while it fits, then more epochs
    round-robin while they fit; the rest skipped, with why."""
    chosen, estimates, epochs, reserve = [], {}, {}, []
    left = available
    skipped = list(skipped)
    names = {it.name for it in order}
    for it in order:
        probe = probes.get(_probe_key(it), {})
        if it.type == "concat":
            heads = [c for c in chosen if c.type == "head"]
            if len(heads) < 2:
                reserve.append(it.to_json())
                continue
        elif "error" in probe:
            skipped.append({"name": it.name, "kind": it.kind,
                            "reason": f"probe failed: {probe['error']}"})
            continue
        e = estimate(it, probe, n, it.epochs[0], num_classes, head_work)
        estimates[it.name] = e
        if it.after and it.after not in {c.name for c in chosen}:
            reserve.append(it.to_json())  # runs if its parent does and time is left
            continue
        if e <= left:
            chosen.append(it)
            epochs[it.name] = it.epochs[0]
            left -= e
        else:  # kept in reserve: run at the end if the stages before took less than planned
            reserve.append(it.to_json())
    grown = True
    while grown:
        grown = False
        for it in chosen:
            if it.type != "train" or epochs[it.name] >= it.epochs[1]:
                continue
            e = estimate(it, probes[_probe_key(it)], n, epochs[it.name] + 1, num_classes)
            if e - estimates[it.name] <= left:
                left -= e - estimates[it.name]
                estimates[it.name], epochs[it.name] = e, epochs[it.name] + 1
                grown = True
    del names
    return {"items": [c.to_json() for c in chosen], "estimates": estimates, "epochs": epochs,
            "skipped": skipped, "reserve": reserve, "available_s": available,
            "planned_s": available - left}


def _print_plan(plan: dict, progress) -> None:
    lines = [f"plan: {len(plan['items'])} stages, {fmt_s(plan['planned_s'])} of "
             f"{fmt_s(plan['available_s'])} available for them"]
    for d in plan["items"]:
        ep = plan["epochs"].get(d["name"])
        lines.append(f"  {label(d['name'])} ({d['kind']}"
                     + (f", {ep} epochs" if d["type"] == "train" else "")
                     + f"): ~{fmt_s(plan['estimates'][d['name']])}")
    for d in plan.get("reserve", []):
        lines.append(f"  reserve (runs if time is left): "
                     f"{label(d['name'])}: "
                     f"~{fmt_s(plan['estimates'].get(d['name']))}")
    for s in plan["skipped"]:
        lines.append(f"  skipped: {label(s['name'])}: "
                     f"{s['reason']}")
    progress("\n".join(lines))


def _record_stage(st: dict, name: str, planned, actual: float) -> None:
    prev = st["stages"].get(name, {})
    st["stages"][name] = {"planned_s": planned if planned is not None else prev.get("planned_s"),
                          "actual_s": prev.get("actual_s", 0.0) + actual}


def _skip(st: dict, it: Item, reason: str, save) -> None:
    st["decisions"][it.name] = {"skipped": True, "reason": reason, "kind": it.kind}
    save()



# ---------------------------------------------------------------------------------------------
# Stage runners: each returns a member row with its honest predictions on labelled rows
# (``oof`` at ``oof_ids``: rows numbered train then val, as ``labelled_ids`` does) and its
# test probabilities. A new kind of candidate is one runner here, one entry in RUNNERS (and
# PROBES), and its items in ``candidates``.


def labelled_ids(n: dict, split: str) -> np.ndarray:
    """Row numbers of ``split`` among the labelled rows (train first, then val)."""
    return np.arange(n["train"]) if split == "train" else n["train"] + np.arange(n["val"])


def _run_train(run: Run, it: Item, data: Data, rows: dict, epochs: int, backbone) -> dict:
    """A ``bench.train.train`` run: its validation predictions are its honest rows."""
    from bench.train import finetune_config, train

    if it.after:
        parent = rows[it.after]
        stage1 = train_config(dataclasses.replace(it, freeze="backbone"), run.spec, run.seed,
                              run.max_per_class, parent["epochs"], backbone)
        freeze = _stage_freeze(backbone, data.num_classes, it.freeze)
        cfg = finetune_config(stage1, {"run_id": parent["run_id"]}, str(run.out), epochs, None,
                              freeze).replace(tag=label(it.name, backbone=backbone))
    else:
        cfg = train_config(it, run.spec, run.seed, run.max_per_class, epochs, backbone)
    if run.devices:
        cfg = cfg.replace(devices=run.devices)
    rec = train(cfg, run.out, quiet=run.quiet, force=run.force, dataset=data.ds[it.size],
                cache_dir=run.cache_dir)
    rd = run.out / "runs" / rec["run_id"]

    def proba(split):
        p = np.exp(np.load(rd / f"{split}_log_proba.npy").astype(np.float64))
        return p / p.sum(1, keepdims=True)

    val, y_val = proba("val"), np.load(rd / "val_labels.npy")
    return {"kind": it.kind, "source": {"type": "run", "run_dir": str(rd.relative_to(run.out))},
            "run_id": rec["run_id"], "epochs": rec["epochs_completed"],
            "val": val, "test": proba("test"), "y_val": y_val,
            "y_test": np.load(rd / "test_labels.npy"),
            "oof": val, "y_oof": y_val, "oof_ids": labelled_ids(data.n, "val"),
            "trained_on": labelled_ids(data.n, "train"), "val_source": "validation",
            "fit_s": rec.get("wall_s"), "img_per_s": rec.get("infer_img_per_s"),
            "params": rec.get("params_total"), "size_mb": (rec.get("weights_bytes") or 0) / 1e6,
            "pipelines": [rec["run_id"]], "model": rec["model"],
            "backbones": [rec["model"]] if it.model == "auto" else []}


def _extract(run: Run, it: Item, dataset) -> tuple[list, float, list, int]:
    """Each backbone's cached features: (paths, seconds, images/s each, parameters)."""
    import features

    paths, extract_s, ips, params = [], 0.0, [], 0
    for b in it.backbones:
        t0 = time.perf_counter()
        p = features.extract(b, dataset, run.out / "features", weights="imagenet (zoo)",
                             image_size=(it.size, it.size), progress=not run.quiet,
                             model=cached_backbone(b))
        secs = float(features.read_attrs(p).get("seconds") or (time.perf_counter() - t0))
        extract_s += secs
        total = sum(len(dataset.splits[k].labels) for k in ("train", "val", "test"))
        ips.append(total / secs)
        params += _backbone_params(b)
        paths.append(p)
    return paths, extract_s, ips, params


def _head_paths(run: Run, it: Item) -> tuple[Path, Path]:
    """Where ``it``'s fitted head is cached: ``zoo/heads/<slug>.npz`` and ``.json``."""
    stem = slug(it.name.replace("{backbones}", "-".join(it.backbones)))
    return run.zdir / "heads" / f"{stem}.npz", run.zdir / "heads" / f"{stem}.json"


HEAD_FORMAT = "logistic head v2: coef, intercept (refit on train+val), out-of-fold proba"


def _fit_head(run: Run, it: Item, X, y, paths) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                          float, Path]:
    """The head cross-fit over the labelled rows (its C search's folds give the out-of-fold
    probabilities), refit on all of them; cached in ``zoo/heads``."""
    from ensembles import LogisticHead

    cv, cs = run.P["head_cv"], run.P["head_cs"]
    npz, meta_path = _head_paths(run, it)
    want = {"features": [str(p) for p in paths], "cv": [cv, cs], "format": HEAD_FORMAT}
    if npz.exists() and meta_path.exists() and not run.force:
        meta = bio.read_json(meta_path)
        if all(meta.get(k) == v for k, v in want.items()):
            arrays, _ = bio.load_arrays(npz)
            return arrays[0], arrays[1], arrays[2], meta["fit_s"], npz
    t0 = time.perf_counter()
    head = LogisticHead(Cs=cs, cv=cv, random_state=run.seed, store_oof=True).fit(X, y)
    fit_s = time.perf_counter() - t0
    bio.save_arrays(npz, [head.coef_, head.intercept_, head.oof_proba_],
                    {"format": HEAD_FORMAT})
    bio.write_json(meta_path, {**want, "fit_s": fit_s, "C": head.C_,
                               "backbones": list(it.backbones), "rows": len(y)})
    return head.coef_, head.intercept_, head.oof_proba_, fit_s, npz


def _run_head(run: Run, it: Item, data: Data, rows: dict, epochs: int, backbone) -> dict:
    """A logistic head on frozen features: out-of-fold over train+val, then refit on both
    (AutoGluon's ``refit_full``) for the test split and export."""
    import features
    from ensembles import combined_throughput
    from ensembles._utils import full_logits, softmax

    paths, extract_s, ips, params = _extract(run, it, data.ds[it.size])
    feats = features.load(paths)
    X = np.concatenate([feats["train"][0], feats["val"][0]])
    y = np.concatenate([feats["train"][1], feats["val"][1]])
    coef, intercept, oof, fit_s, npz = _fit_head(run, it, X, y, paths)
    val_ids = labelled_ids(data.n, "val")
    return {"kind": it.kind,
            "source": {"type": "head", "backbones": list(it.backbones), "size": it.size,
                       "head": str(npz.relative_to(run.out)),
                       "features": [str(Path(p).relative_to(run.out)) for p in paths]},
            "val": oof[val_ids], "y_val": y[val_ids],
            "test": softmax(full_logits(np.asarray(feats["test"][0], np.float64), coef,
                                        intercept)),
            "y_test": feats["test"][1], "oof": oof, "y_oof": y,
            "oof_ids": np.arange(len(y)), "trained_on": np.zeros(0, np.int64),
            "val_source": "out-of-fold", "note": "refit on train+val",
            "fit_s": extract_s + fit_s, "img_per_s": combined_throughput(ips),
            "params": params + coef.size + intercept.size,
            "size_mb": 4 * (params + coef.size + intercept.size) / 1e6,
            "pipelines": [f"backbone:{b}" for b in it.backbones], "backbones": list(it.backbones),
            "ips_by_pipeline": {f"backbone:{b}": v for b, v in zip(it.backbones, ips)},
            "model": "+".join(it.backbones)}


def _backbone_params(name: str) -> int:
    import models
    from flax import nnx

    return models.param_count(nnx.eval_shape(
        lambda: models.create_model(name, num_classes=0)))["total"]


RUNNERS = {"train": _run_train, "head": _run_head, "concat": _run_head}
PROBES = {"train": _probe_training, "head": _probe_head}


# ---------------------------------------------------------------------------------------------
# Leaderboard


def leaderboard(rows: list[dict], dataset, st: dict, plan: dict, budget: float, preset: str,
                spec: str) -> dict:
    """The board: every row scored on test, ranked by validation log-loss; the recommended
    row (the lowest) marked, and each other row's test log-loss against it (paired)."""
    from ensembles import (accuracy, expected_calibration_error, log_loss,
                           log_loss_difference, top_k_accuracy)

    from .zoo_ensembles import score_on_common_rows

    score_on_common_rows(rows)
    k = len(dataset.classes)
    y = rows[0]["y_test"]
    scored = []
    for r in rows:
        p = r["test"]
        scored.append({
            "name": r["name"], "kind": r["kind"], "accuracy": accuracy(y, p),
            "top5_accuracy": top_k_accuracy(y, p, 5) if k > 5 else None,
            "log_loss": log_loss(y, p), "ece": expected_calibration_error(y, p),
            "val_log_loss": r["val_log_loss"], "val_rows": r["val_rows"],
            "val_source": r["val_source"], "val_log_loss_own": r["val_log_loss_own"],
            "val_rows_own": r["val_rows_own"], "fit_rows": r.get("fit_rows"),
            "fit_on": r.get("fit_on"),
            "fit_s": r.get("fit_s"), "img_per_s": r.get("img_per_s"),
            "ms_per_image": 1000.0 / r["img_per_s"] if r.get("img_per_s") else None,
            "params": r.get("params"), "size_mb": r.get("size_mb"),
            "source": r["source"], "note": r.get("note", ""),
            "epochs": r.get("epochs")})
    order = sorted(range(len(rows)), key=lambda i: (scored[i]["val_log_loss"],
                                                    scored[i]["name"]))
    rec = order[0]
    for rank, i in enumerate(order, 1):
        s = scored[i]
        s["rank"], s["recommended"] = rank, i == rec
        s["vs_recommended"] = None if i == rec else log_loss_difference(
            y, rows[i]["test"], rows[rec]["test"])
    bb = st["decisions"].get("backbone") or "(best backbone)"
    skipped = [dict(d, name=label(d["name"], backbone=bb)) for d in plan["skipped"]] + [
        {"name": label(name, backbone=bb),
         "kind": d.get("kind") or next((x["kind"] for x in plan["items"]
                                        + plan.get("reserve", []) if x["name"] == name), ""),
         "reason": d["reason"]}
        for name, d in st["decisions"].items() if isinstance(d, dict) and d.get("skipped")
    ] + st.get("ensembles_skipped", [])
    return {"rows": [scored[i] for i in order], "skipped": skipped,
            "recommended": scored[rec]["name"], "level1": LEVEL1_DESIGN,
            "near_duplicates": st.get("near_duplicates", {}), "budget_s": budget,
            "preset": preset, "dataset": spec, "classes": list(dataset.classes),
            "sizes": {kk: len(v.labels) for kk, v in dataset.splits.items()},
            "plan": {"estimates": plan["estimates"], "epochs": plan["epochs"]}}


__all__ = ["PRESETS", "parse_budget", "run_zoo"]
