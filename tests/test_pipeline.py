"""bench as one pipeline: the import rules, one config tree, one train step (with bf16), the
suite flags, the image size chosen from the data, input normalisation."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest

from helpers import REPO, synthetic_dataset

PACKAGES = ("runtime", "models", "features", "ensembles", "bench")
# Who may import whom (everything else is refused); each package may import itself.
ALLOWED = {"runtime": set(), "models": {"runtime"}, "ensembles": set(),
           "features": {"runtime", "models"},
           "bench": {"runtime", "models", "features", "ensembles"}}


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, module: str) -> set[str]:
    """Project modules ``path`` imports anywhere (lazy imports inside functions too)."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_pkg else base[:-1]
                base = base[:len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            names = [stem] + [f"{stem}.{a.name}" for a in node.names]
        else:
            continue
        out |= {n for n in names if n.split(".")[0] in PACKAGES}
    return out


def _graph() -> dict[str, set[str]]:
    files = [p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")]
    mods = {_module_name(p): p for p in files}
    graph = {}
    for m, p in mods.items():
        deps = set()
        for name in _imports(p, m):
            while name and name not in mods:  # `from pkg import function` -> pkg
                name = name.rpartition(".")[0]
            if name and name != m:
                deps.add(name)
        graph[m] = deps
    return graph


def test_no_import_circles_and_imports_point_down():
    graph = _graph()
    for m, deps in graph.items():
        top = m.split(".")[0]
        for d in deps:
            assert d.split(".")[0] in ALLOWED[top] | {top}, f"{m} imports {d}"
    # Cycles, counting a package's __init__ as importing what it imports.
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for d in graph[m]:
            if d.startswith(m + "."):  # a package importing its own submodules
                continue
            if state.get(d) == 1:
                cycle = stack[stack.index(d):] + [d]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if d not in state:
                visit(d, stack + [d])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])


MAX_FUNCTION_LINES = 100
# Product functions allowed over MAX_FUNCTION_LINES, each with why it stays. A stale entry
# (the function gone or short again) fails too, so the list only shrinks.
LONG_FUNCTIONS: dict[str, str] = {}


def test_no_product_function_over_100_lines():
    """Functions read as named stages (STYLE.md): none in the product over 100 lines."""
    lengths = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    name = f"{path.relative_to(REPO).as_posix()}:{node.name}"
                    lengths[name] = max(lengths.get(name, 0),
                                        node.end_lineno - node.lineno + 1)
    too_long = sorted(f"{n} ({k} lines)" for n, k in lengths.items()
                      if k > MAX_FUNCTION_LINES and n not in LONG_FUNCTIONS)
    assert not too_long, f"split into stages (<= ~60 lines each): {too_long}"
    stale = sorted(n for n in LONG_FUNCTIONS if lengths.get(n, 0) <= MAX_FUNCTION_LINES)
    assert not stale, f"{stale}: no longer over {MAX_FUNCTION_LINES} lines; remove them"


def test_one_config_tree_drives_flags_json_and_run_id(tmp_path):
    import argparse

    from bench import config

    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    args = parser.parse_args(["--model", "resnet20", "--epochs", "3", "--lr", "0.1",
                              "--precision", "bf16", "--model-arg", "width=8",
                              "--normalize", "zca"])
    cfg = config.from_args(args)
    assert (cfg.model.name, cfg.optim.epochs, cfg.optim.lr) == ("resnet20", 3, 0.1)
    assert cfg.precision == "bf16" and cfg.data.normalize == "zca"
    assert cfg.model.model_args == (("width", 8),)
    assert config.from_dict(json.loads(json.dumps(config.to_dict(cfg)))) == cfg
    assert cfg.replace(epochs=4).optim.epochs == 4
    assert cfg.run_id("digits", 1) != cfg.replace(precision="fp32").run_id("digits", 1)


def test_old_flat_configs_load_and_keep_their_run_ids():
    """Version-1 records (flat config.json) migrate through one function, and the hash part
    of every committed seeds-suite run id is unchanged."""
    from bench import config

    saved = json.loads((REPO / "results/seeds/seeds.json").read_text())
    runs = [r for s in saved["results"].values() for r in s.get("runs", [])]
    assert len(runs) > 10
    for rec in runs:
        cfg = config.from_dict(rec["config"])
        name = rec["dataset"]["name"]
        assert cfg.run_id(name, rec["device"]["count"]) == rec["run_id"]


@pytest.mark.parametrize("argv, needle", [
    (["--epochs", "0"], "--epochs 0: expected a positive integer"),
    (["--epochs", "-1", "--schedule", "constant"], "--epochs -1"),
    (["--batch-size", "0"], "--batch-size 0"),
    (["--eval-batch-size", "0"], "--eval-batch-size 0"),
    (["--image-size", "0"], "--image-size 0"),
    (["--model-arg", "bogus=1"], "--model-arg bogus=...: benchmark_cnn takes no 'bogus'"),
    (["--lr", "0"], "--lr 0.0"),
    (["--val-fraction", "0.6", "--test-fraction", "0.5"], "their sum must be below 1"),
])
def test_bad_arguments_fail_in_one_line_before_any_work(tmp_path, capsys, argv, needle):
    from bench.cli import main

    out = tmp_path / "out"
    code = main(["train", "--model", "benchmark_cnn", "--dataset", "digits", "--out", str(out),
                 "--quiet"] + argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert needle in err and "\n" not in err and "Traceback" not in err
    assert not out.exists()  # nothing written for a rejected command


def test_internal_errors_keep_their_traceback_behind_debug(monkeypatch, capsys):
    from bench import cli

    def boom(args):
        raise RuntimeError("something broke\ninside")

    monkeypatch.setitem(cli.COMMANDS, "report", boom)
    assert cli.main(["report", "x"]) == 1
    err = capsys.readouterr().err
    assert "internal error: RuntimeError: something broke inside" in err
    assert "--debug" in err and "Traceback" not in err
    with pytest.raises(RuntimeError):
        cli.main(["report", "x", "--debug"])


def test_image_size_chosen_from_the_data(capsys):
    import models
    from bench.config import make
    from bench.train import choose_image_size

    info = models.get_model_info("benchmark_cnn")
    cfg = make(model="benchmark_cnn", dataset="digits")
    assert info.input_size[0] > 32
    assert choose_image_size(cfg, info, quiet=False) == 32  # 8x8 digits: not 224
    assert "image size 32" in capsys.readouterr().err
    assert choose_image_size(cfg.replace(image_size=48), info) == 48


def test_run_suite_flags_reach_the_suite_or_are_refused(monkeypatch, tmp_path, capsys):
    from bench import cli
    from bench.suites import seeds

    seen = {}

    def fake_run_seeds(data_root, out, **kw):
        seen.update(kw, data_root=data_root, out=out)
        path = Path(tmp_path) / "summary.md"
        path.write_text("seeds summary\n")
        return path

    monkeypatch.setattr(seeds, "run_seeds", fake_run_seeds)
    assert cli.main(["run", "--suite", "seeds", "--data-root", str(tmp_path), "--epochs", "1",
                     "--max-per-class", "30", "--sections", "000"]) == 0
    assert seen["overrides"] == {"epochs": 1, "max_per_class": 30}
    assert seen["sections"] == ("000",)
    capsys.readouterr()
    assert cli.main(["run", "--suite", "quick", "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--data-root: the quick suite does not take it" in err


def test_speed_times_the_train_step_of_bench_train(monkeypatch, tmp_path):
    """`bench speed` and `bench train` call the one engine.build_steps."""
    from bench import engine
    from bench.speed import harness
    from bench.train import train

    calls = []
    real = engine.build_steps

    def counting(*a, **kw):
        calls.append(kw.get("precision"))
        return real(*a, **kw)

    monkeypatch.setattr(engine, "build_steps", counting)
    prep = harness.prepare("benchmark_cnn", 4, 16, precision="bf16", train=True, infer=True)
    assert float(prep.train_step()) > 0 and prep.infer_step().shape == (4, prep.num_classes)
    ds = synthetic_dataset(n_per_class=8, size=16)
    from bench.config import make

    train(make(model="benchmark_cnn", image_size=16, epochs=1, batch_size=8,
               precision="bf16"), tmp_path, dataset=ds, quiet=True)
    assert calls == ["bf16", "bf16"]


def test_bf16_reaches_fp32_accuracy_on_digits(tmp_path):
    from bench.config import make
    from bench.train import train

    common = dict(model="benchmark_cnn", dataset="digits", image_size=32, epochs=12,
                  batch_size=64, optimizer="adam", lr=3e-3, weight_decay=0.0,
                  schedule="cosine", augment="none")
    fp32 = train(make(**common), tmp_path, quiet=True)
    bf16 = train(make(**common, precision="bf16"), tmp_path, quiet=True)
    assert bf16["precision"] == "bf16" and fp32["precision"] == "fp32"
    assert fp32["accuracy"] > 0.6
    assert abs(bf16["accuracy"] - fp32["accuracy"]) <= 0.02, (fp32["accuracy"],
                                                             bf16["accuracy"])


@pytest.mark.parametrize("mode", ["featurewise", "zca"])
def test_normalize_runs_end_to_end_and_is_stored_with_the_run(tmp_path, mode):
    from bench.cli import main
    from bench.evaluate import load_run, predict

    out = tmp_path / "out"
    assert main(["train", "--model", "benchmark_cnn", "--dataset", "digits", "--epochs", "1",
                 "--image-size", "16", "--batch-size", "64", "--normalize", mode,
                 "--out", str(out), "--quiet"]) == 0
    (run_dir,) = (out / "runs").iterdir()
    rec = json.loads((run_dir / "record.json").read_text())
    assert rec["normalize"] == mode and (run_dir / "normalize.npz").is_file()
    run = load_run(run_dir)
    logp = predict(run, run.dataset.splits["test"].images)
    np.testing.assert_allclose(logp, np.load(run_dir / "test_log_proba.npy"), atol=1e-4)


def test_normalize_statistics(monkeypatch):
    from bench import normalize

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (200, 4, 4, 3)).astype(np.uint8)
    fw = normalize.fit("featurewise", x)
    z = np.asarray(normalize.apply(fw, x.astype(np.float32)))
    np.testing.assert_allclose(z.mean(axis=(0, 1, 2)), 0, atol=1e-4)
    np.testing.assert_allclose(z.std(axis=(0, 1, 2)), 1, atol=1e-3)
    monkeypatch.setattr(normalize, "ZCA_EPS", 1e-9)  # unregularised: exactly white
    zca = normalize.fit("zca", x)
    w = np.asarray(normalize.apply(zca, x.astype(np.float32))).reshape(200, -1)
    cov = np.cov(w, rowvar=False, bias=True)
    np.testing.assert_allclose(cov, np.eye(cov.shape[0]), atol=0.05)
    monkeypatch.setattr(normalize, "ZCA_EPS", 0.1)  # the default shrinks every direction
    w = np.asarray(normalize.apply(normalize.fit("zca", x), x.astype(np.float32)))
    assert np.linalg.eigvalsh(np.cov(w.reshape(200, -1), rowvar=False)).max() < 1.0
    with pytest.raises(ValueError, match="zca accepts at most"):
        normalize.fit("zca", np.zeros((2, 128, 128, 3), np.uint8))


def test_train_prints_the_run_folder(tmp_path, capsys):
    from bench.cli import main

    out = tmp_path / "out"
    assert main(["train", "--model", "benchmark_cnn", "--dataset", "digits", "--epochs", "1",
                 "--image-size", "16", "--out", str(out), "--quiet"]) == 0
    line = [s for s in capsys.readouterr().out.splitlines() if s.startswith("run folder: ")]
    assert line and Path(line[0].split(": ", 1)[1], "record.json").is_file()


def test_dataset_names_say_which_data_set(tmp_path):
    from bench.data import display_name

    (tmp_path / "dogs-vs-cats").mkdir()
    z = tmp_path / "dogs-vs-cats" / "train.zip"
    z.write_bytes(b"")
    (tmp_path / "food101-3class" / "images").mkdir(parents=True)
    assert display_name(z) == "dogs-vs-cats-train"
    assert display_name(tmp_path / "food101-3class" / "images") == "food101-3class-images"
    assert display_name(tmp_path / "food101-3class") == "food101-3class"


def test_models_says_what_it_is_doing_before_counting(capsys):
    from bench.cli import main

    assert main(["models", "resnet2*"]) == 0
    captured = capsys.readouterr()
    assert "building" in captured.err and "--no-params" in captured.err
    assert "resnet20" in captured.out


def test_feature_caches_in_the_repo_are_ignored():
    import subprocess

    for path in ("cache/features/x.h5", "results/features/x.h5"):
        r = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO)
        assert r.returncode == 0, f"{path} is not ignored by .gitignore"
