"""The ``bench`` command line. Heavy imports (JAX, Flax) happen inside the subcommands, so
``bench --help`` starts fast."""

from __future__ import annotations

import argparse
import os
import sys
from importlib import import_module
from pathlib import Path

DEFAULT_OUT = "results"


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=DEFAULT_OUT, help="results directory (default: results/)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.add_argument("--cache-dir", help="prepared-data cache (default: ~/.cache/bench/datasets "
                   "or $BENCH_CACHE_DIR/datasets)")
    p.add_argument("--devices", type=int, help="use the first N local devices (default: all)")
    p.add_argument("--coordinator", help="multi-host: coordinator address HOST:PORT "
                   "(jax.distributed.initialize)")
    p.add_argument("--num-processes", type=int, help="multi-host: number of processes")
    p.add_argument("--process-id", type=int, help="multi-host: this process's index")


def _add_train_args(p: argparse.ArgumentParser) -> None:
    """``bench train``'s flags: one per ``bench.config`` option, plus what is not part of a
    run's identity (where to look for weights, downloading, rerunning, stage 2)."""
    from .config import add_arguments

    add_arguments(p, required=("model",), skip=("devices",))
    g = p.add_argument_group("weights and reruns")
    g.add_argument("--pretrained", action="store_true", help="same as --weights imagenet")
    g.add_argument("--weights-dir", help="where to look for pretrained files "
                   "(also $BENCH_WEIGHTS_DIR)")
    g.add_argument("--download", action="store_true",
                   help="allow downloading official pretrained files (checksum verified)")
    g.add_argument("--force", action="store_true", help="rerun even if a complete record exists")
    g = p.add_argument_group("two-stage fine-tuning (reports 003/004): after this run, train "
                             "again from its weights with a lower learning rate")
    g.add_argument("--finetune-epochs", type=int, default=0, help="epochs of stage 2 (0: none)")
    g.add_argument("--finetune-lr", type=float, help="stage-2 learning rate (default: lr/10)")
    g.add_argument("--finetune-freeze", help="blocks still frozen in stage 2 (default: none)")


def _run_parser(sub) -> None:
    """``bench run``: a suite of runs (quick, seeds, zoo) on one data set."""
    p = sub.add_parser("run", help="run a suite of models and write the comparison table")
    p.add_argument("--suite", default="quick",
                   help="'quick' (default: two models on --dataset), 'seeds' (the five "
                        "reports replayed on --data-root; writes results/seeds/) or 'zoo' "
                        "(scratch, frozen, fine-tuned and ensembled models on --dataset within "
                        "--time-budget; one leaderboard)")
    p.add_argument("--dataset", help="quick: 'digits' (bundled default), a folder or .zip, "
                   "or tfds:NAME")
    p.add_argument("--data-root", help="seeds: folder with the data sets it needs "
                   "(food101-3class/, dogs-vs-cats/, cifar10-jpeg/ as ../shared/assets)")
    p.add_argument("--sections", help="seeds: comma-separated report numbers "
                   "(default: 000,001,002,003,004)")
    p.add_argument("--epochs", type=int, help="override every run's epochs")
    p.add_argument("--max-per-class", type=int, help="use at most N images per class")
    p.add_argument("--time-budget", help="zoo: wall-time budget, e.g. 20m, 90s, 1h (default 20m)")
    p.add_argument("--preset", choices=("fast", "best"), help="zoo: candidate set (default best)")
    p.add_argument("--seed", type=int, default=0, help="split and training seed (default 0)")
    p.add_argument("--force", action="store_true",
                   help="rerun runs that already have a complete record")
    _add_common(p)


def _predict_parser(sub) -> None:
    """``bench predict``: a leaderboard row or an exported predictor on new images."""
    p = sub.add_parser("predict", help="predict images with a zoo leaderboard row or an "
                       "exported predictor folder")
    p.add_argument("--from", dest="from_", required=True,
                   help="a zoo output folder (OUT) or an exported predictor folder (OUT/best)")
    p.add_argument("--model", help="'best' (default) or a leaderboard row's name")
    p.add_argument("images", nargs="+", metavar="IMAGES_OR_FOLDER",
                   help="image files and/or folders (searched recursively)")
    p.add_argument("--out", required=True, help="predictions file (.csv)")
    p.add_argument("--format", default="csv", help="'csv' (file, predicted class, class "
                   "probabilities) or 'kaggle' (id,label: the positive class's probability)")
    p.add_argument("--template", help="a competition's sample submission (.csv): its rows, "
                   "order and id column, filled with the predicted class or one probability "
                   "per class column (replaces --format)")


def _train_parser(sub) -> None:
    """``bench train``: one model, trained and evaluated."""
    p = sub.add_parser("train", help="train and evaluate one model")
    _add_train_args(p)
    _add_common(p)


def _features_parser(sub) -> None:
    """``bench features``: frozen-backbone embeddings in HDF5."""
    p = sub.add_parser("features", help="embed a data set with frozen pretrained backbones "
                       "(one HDF5 file per backbone)")
    p.add_argument("--backbone", required=True,
                   help="comma-separated model names, e.g. efficientnet_lite0,efficientnet_lite1")
    p.add_argument("--dataset", default="digits", help="'digits' (bundled default), a folder or "
                   ".zip of images (class folders, a labels CSV, Hugging Face files), a labels "
                   ".csv, or tfds:NAME")
    p.add_argument("--labels", help="a .csv naming each image and its label (as for train)")
    p.add_argument("--id-column", help="--labels' id/file column (default: detected by name)")
    p.add_argument("--label-column", help="the label column (default: detected by name)")
    p.add_argument("--weights", default="imagenet",
                   help="'imagenet' (default), a weights file, or 'none' for random init")
    p.add_argument("--weights-dir",
                   help="where to look for pretrained files (also $BENCH_WEIGHTS_DIR)")
    p.add_argument("--download", action="store_true",
                   help="allow downloading official pretrained files (checksum verified)")
    p.add_argument("--image-size", type=int, help="default: each backbone's input size")
    p.add_argument("--batch-size", type=int, default=64,
                   help="images per forward pass (default 64)")
    p.add_argument("--seed", type=int, default=0, help="split seed")
    p.add_argument("--max-per-class", type=int, help="use at most N images per class")
    p.add_argument("--force", action="store_true", help="recompute even if files match")
    _add_common(p)
    p.set_defaults(out="results/features")


def _ensemble_parser(sub) -> None:
    """``bench ensemble``: heads on feature files, their average and their stack."""
    p = sub.add_parser("ensemble", help="logistic heads on feature files, their average and "
                       "their stack, added to the results table")
    p.add_argument("--features", required=True,
                   help="a directory of .h5 feature files or comma-separated files")
    p.add_argument("--out", default=DEFAULT_OUT,
                   help="results directory for the ensemble rows (default: results/)")
    p.add_argument("--cv", type=int, default=5, help="folds for the L2 search and the stack")
    p.add_argument("--clip", type=float, default=1e-15,
                   help="log-loss clip eps (Kaggle scoring clips predictions to [eps, 1-eps])")
    p.add_argument("--seed", type=int, default=0, help="split and fold seed (default 0)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


def _group_parser(sub) -> None:
    """``bench group``: report 004's class grouping of a trained run."""
    p = sub.add_parser("group", help="merge the classes a trained run confuses (from its "
                       "validation confusion) and score its test predictions per group")
    p.add_argument("--run", required=True, help="a run directory, OUT/runs/<run_id>")
    p.add_argument("--groups", default="auto",
                   help="number of groups, or 'auto' (cut where mean confusion < --min-confusion)")
    p.add_argument("--method", choices=("agglomerative", "spectral"), default="agglomerative",
                   help="how classes are merged (default agglomerative)")
    p.add_argument("--min-confusion", type=float,
                   help="for --groups auto: merge classes confused at least this often "
                        "(default 0.1)")
    p.add_argument("--cache-dir", help="prepared-data cache (only for runs without saved "
                   "validation predictions)")


def _speed_parser(sub) -> None:
    """``bench speed``: the timm-style throughput table, optionally against peers."""
    p = sub.add_parser("speed", help="train/inference throughput, GFLOPs and MFU per model "
                       "(timm-style table), optionally against Keras and PyTorch")
    p.add_argument("--models", required=True, help="comma-separated names or patterns")
    p.add_argument("--batch-size", type=int, default=64, help="global batch size (default 64)")
    p.add_argument("--image-size", type=int, help="default: each model's input size")
    p.add_argument("--precision", default="fp32",
                   help="fp32, bf16 or both (fp32,bf16); bf16 = mixed precision: bf16 "
                        "compute, fp32 master weights and loss")
    p.add_argument("--peak-tflops", help="also MFU against these peaks per device, e.g. "
                   "bf16=790 (a measured matmul rate), beside the spec-sheet MFU")
    p.add_argument("--devices", type=int, help="use the first N local devices (default: all)")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps (default 2)")
    p.add_argument("--repeats", type=int, default=10,
                   help="timed steps; the median is reported (default 10)")
    p.add_argument("--no-train", action="store_true", help="skip the train-step timing")
    p.add_argument("--no-infer", action="store_true", help="skip the inference timing")
    p.add_argument("--vs", default="", help="peers to time in the same run: keras, torch, "
                   "timm, torch+compile, timm+compile (comma-separated)")
    p.add_argument("--torch-compile", action="store_true",
                   help="run every PyTorch peer through torch.compile")
    p.add_argument("--num-classes", type=int,
                   help="head size (default: the model's registered default)")
    p.add_argument("--out", default="results/speed", help="output folder (default: results/speed)")
    p.add_argument("--name", default="speed", help="output file stem (NAME.json, NAME.md)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


def _compare_parser(sub) -> None:
    """``bench compare``: changes between two result or benchmark files."""
    p = sub.add_parser("compare", help="changes between two result or benchmark files "
                       "(speed.json, pytest-benchmark JSON, summary.csv); exit 1 on regressions")
    p.add_argument("a", help="the baseline file")
    p.add_argument("b", help="the file compared with it")
    p.add_argument("--threshold", type=float, default=0.05,
                   help="relative change flagged as a regression (default 0.05)")
    p.add_argument("--json", help="also write the rows to this JSON file")


def _report_parser(sub) -> None:
    """``bench report``: tables, plots and the HTML page from run records."""
    p = sub.add_parser("report", help="regenerate summary.csv / summary.md from run records")
    p.add_argument("dir", nargs="?", default=DEFAULT_OUT,
                   help="the results folder (default: results/)")
    p.add_argument("--title", help="title of summary.md and report.html "
                   "(default: 'bench report: PARENT/FOLDER')")
    p.add_argument("--force", action="store_true",
                   help="replace tables even with fewer rows than they have (by default a "
                        "table is kept when its run records are missing)")


def _inspect_parser(sub) -> None:
    """``bench inspect``: the data-set audit (its flags live in ``inspect.options``)."""
    from .inspect.options import add_inspect_parser

    add_inspect_parser(sub)


def _models_parser(sub) -> None:
    """``bench models``: the registry."""
    p = sub.add_parser("models", help="list registered models")
    p.add_argument("pattern", nargs="?", default="*",
                   help="fnmatch pattern over model names (default: all)")
    p.add_argument("--no-params", action="store_true", help="skip parameter counting (faster)")

def _serve_parser(sub) -> None:
    """``bench serve``: a predictor behind an upload page and a JSON API, micro-batched."""
    p = sub.add_parser("serve", help="serve a zoo leaderboard row or an exported predictor: "
                       "upload page and JSON API (/predict, /model, /health), micro-batched")
    p.add_argument("--from", dest="from_", required=True,
                   help="a zoo output folder (OUT) or an exported predictor folder (OUT/best)")
    p.add_argument("--model", help="'best' (default) or a leaderboard row's name")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default "
                   "127.0.0.1: this machine only; 0.0.0.0 exposes it to the network)")
    p.add_argument("--port", type=int, default=8000, help="default 8000; 0: any free port")
    p.add_argument("--max-batch", type=int, default=16, help="most images run in one batch; "
                   "batch shapes 1, 2, 4, ... up to it are compiled at start-up (default 16)")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch's first "
                   "image waits for others to join it (default 5)")
    p.add_argument("--max-upload-mb", type=float, default=32.0,
                   help="largest request body, refused while it streams in (default 32)")
    p.add_argument("--max-files", type=int, default=32, help="most images in one request "
                   "(default 32)")
    p.add_argument("--max-queue", type=int, default=256, help="most images waiting; beyond "
                   "it /predict answers 503 with Retry-After (default 256)")
    p.add_argument("--token", help="require 'Authorization: Bearer TOKEN' on /predict and "
                   "/model (default: $BENCH_SERVE_TOKEN if set)")
    p.add_argument("--access-log", action="store_true", help="log every request")


SUBCOMMANDS = (_run_parser, _predict_parser, _train_parser, _features_parser,
               _ensemble_parser, _group_parser, _speed_parser, _compare_parser,
               _report_parser, _inspect_parser, _models_parser, _serve_parser)
"""One function per subcommand, in the order ``bench --help`` lists them."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench",
        description="Train, evaluate and compare image classifiers (JAX/Flax) on your images.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def _init_distributed(args) -> None:
    if getattr(args, "coordinator", None):
        import jax

        if args.num_processes is None or args.process_id is None:
            raise SystemExit("--coordinator needs --num-processes and --process-id")
        jax.distributed.initialize(args.coordinator, num_processes=args.num_processes,
                                   process_id=args.process_id)


def cmd_train(args) -> int:
    from .config import from_args
    from .train import finetune_config, train

    cfg = from_args(args)
    if args.pretrained:
        cfg = cfg.replace(weights="imagenet")
    if args.devices:
        cfg = cfg.replace(devices=args.devices)
    _init_distributed(args)
    if args.weights_dir:
        os.environ["BENCH_WEIGHTS_DIR"] = args.weights_dir
    records = [train(cfg, args.out, quiet=args.quiet, force=args.force,
                     cache_dir=args.cache_dir, download=args.download)]
    if args.finetune_epochs:
        records.append(train(finetune_config(cfg, records[0], args.out, args.finetune_epochs,
                                             args.finetune_lr, args.finetune_freeze),
                             args.out, quiet=args.quiet, force=args.force,
                             cache_dir=args.cache_dir))
    _finish(args.out, records, args.quiet)
    for rec in records:
        print(f"run folder: {Path(args.out) / 'runs' / rec['run_id']}")
    return 0


def cmd_run(args) -> int:
    from .suites import get_suite

    suite = get_suite(args.suite)
    given = {k: getattr(args, k) for k in ("dataset", "data_root", "sections", "epochs",
                                          "max_per_class", "time_budget", "preset")
             if getattr(args, k) is not None}
    refused = sorted(set(given) - set(suite.accepts))
    if refused:
        flags = ", ".join("--" + k.replace("_", "-") for k in refused)
        raise ValueError(f"{flags}: the {suite.name} suite does not take "
                         f"{'it' if len(refused) == 1 else 'them'}; it takes "
                         + ", ".join("--" + k.replace("_", "-") for k in suite.accepts))
    _init_distributed(args)
    out = suite.default_out if args.out == DEFAULT_OUT and suite.default_out else args.out
    result = suite.run(out=out, quiet=args.quiet, force=args.force, cache_dir=args.cache_dir,
                       seed=args.seed, devices=args.devices, **given)
    if isinstance(result, Path):  # a suite that writes its own summary
        print(result.read_text())
        print(f"wrote {result}")
    else:
        _finish(out, result, args.quiet)
    return 0


def _finish(out: str, records: list[dict], quiet: bool) -> None:
    from .report.tables import summary_markdown, write_summary

    rows = write_summary(out)
    ids = {r["run_id"] for r in records}

    print(summary_markdown([r for r in rows if r["run_id"] in ids]))
    print(f"wrote {Path(out) / 'summary.csv'} and {Path(out) / 'summary.md'}"
          f" ({len(rows)} runs)")


def cmd_features(args) -> int:
    import time

    import features
    import models

    from .data import load_dataset

    _init_distributed(args)
    weights = None if args.weights in ("none", "None", "") else args.weights
    names = [b.strip() for b in args.backbone.split(",") if b.strip()]
    for name in names:  # unknown names and sizes fail before any work
        info = models.get_model_info(name)
        lo = info.min_input_size
        least = lo[0] if lo else 1
        if args.image_size is not None and args.image_size < least:
            raise ValueError(f"--image-size {args.image_size}: {name} needs at least {least}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size {args.batch_size}: expected a positive integer")
    paths = []
    for name in names:
        info = models.get_model_info(name)
        size = args.image_size or info.input_size[0]
        w = weights
        if args.download and w in info.pretrained:  # fetch (checksum-verified) if missing
            w = str(models.resolve_pretrained(info, w, weights_dir=args.weights_dir,
                                              download=True))
        ds = load_dataset(args.dataset, size, cache_dir=args.cache_dir, seed=args.seed,
                          progress=not args.quiet, max_per_class=args.max_per_class,
                          labels=args.labels, id_column=args.id_column,
                          label_column=args.label_column)
        t0 = time.perf_counter()
        path = features.extract(name, ds, args.out, weights=w, batch_size=args.batch_size,
                                devices=args.devices, progress=not args.quiet,
                                weights_dir=args.weights_dir, force=args.force,
                                image_size=(size, size))
        dt = time.perf_counter() - t0
        attrs = features.read_attrs(path)
        how = attrs.get("seconds")
        print(f"{name}: {path} (dim {attrs.get('feature_dim')}, {dt:.1f} s"
              + (f"; extraction {how:.1f} s" if isinstance(how, (int, float)) else "") + ")")
        paths.append(path)
    return 0


def cmd_ensemble(args) -> int:
    from .ensemble import ensemble_markdown, feature_files, run_ensemble
    from .report.tables import write_summary

    files = feature_files(args.features)
    if not args.quiet:
        print(f"ensemble over {len(files)} feature file(s):", *files, sep="\n  ")
    rows = run_ensemble(files, args.out, cv=args.cv, seed=args.seed, eps=args.clip,
                        quiet=args.quiet)
    write_summary(args.out)
    print(ensemble_markdown(rows, args.clip))
    return 0


def cmd_group(args) -> int:
    from .group import group_markdown, group_run

    if args.groups == "auto":
        k = None
    else:
        try:
            k = int(args.groups)
        except ValueError:
            raise ValueError(f"--groups {args.groups!r}: expected an integer or 'auto'") from None
    result = group_run(args.run, k, method=args.method, min_confusion=args.min_confusion,
                       cache_dir=args.cache_dir)
    print(group_markdown(result))
    print(f"wrote {Path(args.run) / 'groups.json'} and grouped_confusion.csv/.png")
    return 0


def cmd_speed(args, argv: list[str]) -> int:
    import shlex

    import models

    from .speed.harness import parse_peaks, speed, speed_markdown, write_speed

    names: list[str] = []
    for item in (s.strip() for s in args.models.split(",") if s.strip()):
        found = models.list_models(item) if any(c in item for c in "*?[") else [item]
        if not found:
            raise ValueError(f"--models: no model matches {item!r}")
        names += [n for n in found if n not in names]
    vs = tuple(v.strip() for v in args.vs.split(",") if v.strip())
    peaks = parse_peaks(args.peak_tflops)
    rows = speed(names, batch_size=args.batch_size, image_size=args.image_size,
                 precision=args.precision, devices=args.devices, warmup=args.warmup,
                 repeats=args.repeats, train=not args.no_train, infer=not args.no_infer, vs=vs,
                 num_classes=args.num_classes, torch_compile=args.torch_compile,
                 progress=None if args.quiet else print, measured_peaks=peaks)
    paths = write_speed(rows, args.out, args.name, command="bench " + shlex.join(argv),
                        extra={"measured_peaks": peaks} if peaks else None)
    print(speed_markdown(rows))
    print("wrote", *paths)
    return 0


def cmd_compare(args) -> int:
    from .report.compare import compare_files, compare_table, regressions, write_compare

    rows = compare_files(args.a, args.b, args.threshold)
    print(compare_table(rows))
    if args.json:
        write_compare(rows, args.json)
    bad = regressions(rows)
    if bad:
        print(f"{len(bad)} regression(s) beyond {args.threshold:.0%}")
        return 1
    return 0


def cmd_report(args) -> int:
    from .report.html import write_html, write_plots
    from .report.tables import table_rows, write_summary

    out = Path(args.dir)
    # A seeds-suite folder keeps its report-beside-ours summary.md; the plain table is runs.md.
    seeds = (out / "seeds.json").exists()
    md = "runs.md" if seeds else "summary.md"
    tables = [out / "summary.csv", out / md, out / "report.html"]
    before = {p: (p.stat().st_mtime_ns if p.exists() else None) for p in tables}
    had = max((table_rows(p) or 0) for p in tables)
    rows = write_summary(out, args.title, md_name=md, force=args.force)
    # Fewer runs than the tables had (run records absent, as in a fresh clone): the report
    # page and the plots are not redone from less either.
    plots = []
    if args.force or len(rows) >= had:
        write_html(out, title=args.title, force=args.force)
        plots = write_plots(out)
    written = [p for p in tables if p.exists() and p.stat().st_mtime_ns != before[p]]
    if seeds:
        from .suites.seeds import rewrite_summary

        written.append(rewrite_summary(out))
    if (out / md).exists():
        print((out / md).read_text())
    print(f"{len(rows)} runs; wrote", *written, *plots, sep="\n  ")
    return 0


def cmd_models(args) -> int:
    import models

    names = models.list_models(args.pattern)
    if not names:
        print(f"no model matches {args.pattern!r}", file=sys.stderr)
        return 1
    header = f"{'model':26} {'family':20} {'input':>11} {'prep':6} {'params':>12}  source"
    if not args.no_params:
        print(f"building {len(names)} models abstractly to count parameters "
              f"(--no-params to skip)", file=sys.stderr, flush=True)
    print(header)
    print("-" * len(header), flush=True)
    for name in names:
        info = models.get_model_info(name)
        h, w, c = info.input_size
        params = ""
        if not args.no_params:
            import jax

            from flax import nnx

            abstract = nnx.eval_shape(lambda: models.create_model(name))
            params = f"{models.param_count(abstract)['total']:,}"
            jax.clear_caches()
        pre = "*" if info.pretrained else " "
        print(f"{name + pre:26} {info.family:20} {f'{h}x{w}x{c}':>11} {info.preprocessing:6} "
              f"{params:>12}  {info.source}", flush=True)
    print("\n* pretrained weights available (offline: shipped package or --weights-dir)")
    return 0


def cmd_predict(args) -> int:
    from .predict import cmd_predict as run

    return run(args)


def _inspect(args) -> int:
    from .inspect import cmd_inspect

    return cmd_inspect(args)


COMMANDS = {"run": cmd_run, "train": cmd_train, "features": cmd_features,
            "ensemble": cmd_ensemble, "group": cmd_group, "speed": cmd_speed,
            "compare": cmd_compare, "report": cmd_report, "models": cmd_models,
            "inspect": lambda args: _inspect(args), "predict": cmd_predict,
            "serve": lambda args: import_module("bench.serve.server").cmd_serve(args)}


def main(argv: list[str] | None = None) -> int:
    """Run ``bench ARGS``. Bad input ends in one line on stderr naming the flag or file, the
    value and what is accepted (exit 2); an unexpected error likewise, with its traceback
    only under ``--debug`` (anywhere on the line) or ``BENCH_DEBUG=1``."""
    from runtime.malloc import is_bench_program, keep_freed_memory, reexec_under_tcmalloc

    if argv is None and is_bench_program():  # never a host that calls main() (a notebook)
        reexec_under_tcmalloc()  # returns only where tcmalloc is not to be had
        keep_freed_memory()  # then glibc keeps freed blocks (runtime/malloc.py)
    from .train import TrainingDiverged  # numpy only: no JAX on the --help path

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("BENCH_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    if args.command not in ("compare", "report", "models", "inspect"):
        from runtime.compile_cache import enable_compile_cache

        enable_compile_cache()  # before the first compile; BENCH_COMPILE_CACHE=0 turns it off
    try:
        if args.command == "speed":
            return cmd_speed(args, argv)
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, KeyError, TrainingDiverged) as e:
        if debug:
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"bench {args.command}: error: {_one_line(msg)}", file=sys.stderr)
        return 2
    except Exception as e:  # an internal error: one line, the traceback behind --debug
        if debug:
            raise
        print(f"bench {args.command}: internal error: {type(e).__name__}: {_one_line(e)} "
              f"(rerun with --debug for the traceback)", file=sys.stderr)
        return 1


def _one_line(msg) -> str:
    lines = [s.strip() for s in str(msg).splitlines() if s.strip()]
    return " ".join(lines) if len(lines) <= 3 else " ".join(lines[:3]) + " ..."


if __name__ == "__main__":
    sys.exit(main())
