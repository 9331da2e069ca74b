"""The bench CLI: fast --help, models listing, train/report round trip, bad files, fine-tuning."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from helpers import REPO, write_image_folder

TINY = ["--image-size", "16", "--batch-size", "16", "--optimizer", "adam", "--lr", "0.003",
        "--weight-decay", "0", "--augment", "none", "--quiet"]


def test_help_does_not_import_jax():
    code = ("import sys, bench.cli; bench.cli.build_parser().format_help(); "
            "print('jax' in sys.modules, 'flax' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, check=True).stdout
    assert out.split() == ["False", "False"]
    help_text = subprocess.run([sys.executable, "-m", "bench", "--help"], capture_output=True,
                               text=True, cwd=REPO, check=True).stdout
    for cmd in ("run", "train", "report", "models"):
        assert cmd in help_text


def test_models_lists_every_registered_model(capsys):
    import models
    from bench.cli import main

    assert main(["models", "resnet*"]) == 0
    out = capsys.readouterr().out
    for name in models.list_models("resnet*"):
        assert name in out
    assert "269,722" in out or "271,098" in out  # resnet20 total, counted abstractly


def test_unknown_model_is_a_clear_error(capsys):
    from bench.cli import main

    assert main(["train", "--model", "resnet21", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'resnet21'" in err and "resnet20" in err


def _bad_folder(root):
    from PIL import Image

    write_image_folder(root, n_per_class=12, size=16, num_classes=2)
    good = next((root / "c0").glob("*.png"))
    (root / "c0" / "truncated.jpg").write_bytes(good.read_bytes()[:40])
    (root / "c0" / "empty.jpg").write_bytes(b"")
    (root / "c1" / "notes.jpg").write_text("this is not an image")
    Image.fromarray(np.full((20, 20), 128, np.uint8), "L").save(root / "c1" / "grey.png")
    Image.fromarray(np.full((20, 20, 4), 200, np.uint8), "RGBA").save(root / "c0" / "rgba.png")
    return root


def test_train_on_folder_with_bad_files_counts_skips(tmp_path, capsys):
    from bench.cli import main

    data = _bad_folder(tmp_path / "imgs")
    out = tmp_path / "out"
    code = main(["train", "--model", "benchmark_cnn", "--dataset", str(data), "--epochs", "1",
                 "--out", str(out), "--cache-dir", str(tmp_path / "cache")] + TINY)
    assert code == 0
    rec = json.loads(next(out.glob("runs/*/record.json")).read_text())
    assert rec["status"] == "complete"
    assert rec["dataset"]["skipped_count"] == 3
    reasons = {s["path"].rsplit("/", 1)[-1] for s in rec["dataset"]["skipped"]}
    assert reasons == {"truncated.jpg", "empty.jpg", "notes.jpg"}
    assert sum(rec["dataset"]["sizes"].values()) == 12 * 2 + 2  # grey + RGBA kept
    summary = (out / "summary.csv").read_text().splitlines()
    assert summary[0].startswith("run_id,") and len(summary) == 2


def test_two_stage_finetune_and_report(tmp_path, capsys):
    from bench.cli import main

    data = write_image_folder(tmp_path / "imgs", n_per_class=15, size=16)
    out = tmp_path / "out"
    code = main(["train", "--model", "resnet20", "--dataset", str(data), "--epochs", "1",
                 "--freeze", "backbone", "--finetune-epochs", "1", "--out", str(out),
                 "--cache-dir", str(tmp_path / "cache")] + TINY)
    assert code == 0
    recs = {r["tag"]: r for r in
            (json.loads(p.read_text()) for p in out.glob("runs/*/record.json"))}
    assert set(recs) == {"resnet20", "resnet20+finetune"}
    stage2 = recs["resnet20+finetune"]
    assert stage2["config"]["optim"]["lr"] == pytest.approx(0.0003)
    assert stage2["config"]["model"]["init_from"].endswith("weights.npz")
    assert main(["report", str(out)]) == 0
    md = (out / "summary.md").read_text()
    assert "resnet20+finetune" in md and "| run |" in md


def test_bad_init_from_names_the_file(tmp_path, capsys):
    from bench.cli import main

    data = write_image_folder(tmp_path / "imgs", n_per_class=6, size=16)
    bogus = tmp_path / "bogus.npz"
    bogus.write_bytes(b"not a checkpoint")
    code = main(["train", "--model", "benchmark_cnn", "--dataset", str(data), "--epochs", "1",
                 "--init-from", str(bogus), "--out", str(tmp_path / "o"),
                 "--cache-dir", str(tmp_path / "c")] + TINY)
    assert code == 2
    assert str(bogus) in capsys.readouterr().err


def test_cli_docs_are_in_step_with_bench_help():
    """docs/cli.md is what `python -m bench.cli_docs` writes, and names every subcommand and
    every flag that `bench COMMAND --help` prints."""
    import argparse
    import re

    from bench.cli import build_parser
    from bench.cli_docs import cli_markdown

    page = (REPO / "docs" / "cli.md").read_text()
    assert page == cli_markdown(), "docs/cli.md is stale: python -m bench.cli_docs > docs/cli.md"
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert sub.choices and all(f"## bench {name}\n" in page for name in sub.choices)
    for name, p in sub.choices.items():
        section = page.split(f"## bench {name}\n", 1)[1].split("\n## bench ", 1)[0]
        flags = set(re.findall(r"(?<![\w-])--?[a-zA-Z][\w-]*", p.format_help())) - {"-h", "--help"}
        assert flags, name
        missing = sorted(f for f in flags if f"`{f}" not in section and f", {f}" not in section)
        assert not missing, f"bench {name}: {missing} not in docs/cli.md"
