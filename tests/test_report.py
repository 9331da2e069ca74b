"""bench report: the one record schema (bench/report/schema.py), record migration, the
committed tables re-rendered unchanged, tables never replaced by less, per-data-set best,
bench compare keeping every run, plot titles that fit, the report's title."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from pathlib import Path

import pytest

from helpers import REPO

from runtime import io as bio
from bench.report import compare, schema
from bench.report.tables import load_records, summary_markdown, write_summary

SEEDS = REPO / "results" / "seeds"


def _record(tag, acc, dataset="digits", run_id=None, **kw):
    rec = {"record_version": 2, "run_id": run_id or f"{tag}-{dataset}-1dev-0", "tag": tag,
           "model": tag, "status": "complete", "dataset": {"name": dataset},
           "config": {"precision": kw.pop("precision", "fp32")}, "epochs_completed": 3,
           "accuracy": acc, "log_loss": 0.4, "train_img_per_s": 100.0,
           "infer_img_per_s": 300.0, "params_total": 271_098, "weights_bytes": 1_084_392,
           "wall_s": 12.0, "device": {"count": 1, "kind": "cpu"},
           "finished": "2025-01-01T00:00:00"}
    rec["precision"] = rec["config"]["precision"]
    rec.update(kw)
    return rec


def _write_runs(out: Path, records) -> None:
    for r in records:
        bio.write_json(out / "runs" / r["run_id"] / "record.json", r)


def _seeds_records() -> list[dict]:
    """The run records and ensemble rows the committed seeds.json holds."""
    saved = json.loads((SEEDS / "seeds.json").read_text())["results"]
    recs = {}
    for section in saved.values():
        for r in [*section.get("runs", []), *section.get("rows", [])]:
            recs[r["run_id"]] = r
        for k in ("frozen", "all", "best"):
            if k in section:
                recs[section[k]["run_id"]] = section[k]
    return list(recs.values())


def _rebuild_seeds(out: Path) -> None:
    for r in _seeds_records():
        if r["run_id"].startswith("ensemble-"):
            bio.write_json(out / "rows" / f"{r['run_id']}.json", r)
        else:
            bio.write_json(out / "runs" / r["run_id"] / "record.json", r)


needs_seeds = pytest.mark.skipif(not (SEEDS / "seeds.json").exists(),
                                 reason="no committed seeds run")


# -- one schema -------------------------------------------------------------------------------

READERS = ("bench/report/tables.py", "bench/report/html.py", "bench/report/compare.py",
           "bench/suites/seeds.py", "bench/ensemble.py", "bench/group.py")


@pytest.mark.parametrize("path", READERS)
def test_columns_and_formatters_live_in_the_schema(path):
    """No reader keeps its own column list or metric table: they import the schema's."""
    src = (REPO / path).read_text()
    assert re.search(r"\bschema\b", src), f"{path} does not read bench.report.schema"
    assert not re.search(r"^\s*_?[A-Z_]*COLUMNS\s*=\s*[\(\[]", src, re.M), path
    assert not re.search(r"^\s*[A-Z_]*METRICS\s*=\s*\{", src, re.M), path
    assert "def _fmt(key" not in src and "def _cell(key" not in src, path
    # percentages are formatted by schema.pct, not by hand
    assert "100 * r['accuracy']:.2f}%" not in src and "100 * v:.2f}%" not in src, path


def test_schema_columns_and_formatters():
    assert {c.key for c in schema.SUMMARY_CSV} <= set(schema.COLUMNS)
    assert all(f.name and f.type for f in schema.FIELDS)
    assert "precision" in [c.key for c in schema.SUMMARY_MD]
    assert schema.fmt("params_total", 11_194) == "11,194"
    assert schema.fmt("params_total", 1_142_339) == "1.14M"
    assert schema.fmt("accuracy", 0.6816666) == "68.17%"
    assert schema.fmt("accuracy", None) == "" and schema.fmt("log_loss", float("nan")) == ""
    assert schema.fmt("infer_img_per_s", 31924.51) == "31924.5"
    assert schema.fmt("infer_img_per_s", 31924.51, grouped=True) == "31,924.5"
    assert schema.metrics() == {"accuracy": True, "top5_accuracy": True, "log_loss": False,
                                "train_img_per_s": True, "infer_img_per_s": True}
    assert compare.SUMMARY_METRICS == schema.metrics()


# -- record versions --------------------------------------------------------------------------

def _v1_record() -> dict:
    """A record_version 1 record: flat config, no precision / normalize keys."""
    rec = _record("resnet20", 0.81, run_id="resnet20-digits-1dev-v1")
    rec.pop("precision")
    rec["record_version"] = 1
    rec["config"] = {"model": "resnet20", "dataset": "digits", "image_size": 32, "epochs": 3,
                     "batch_size": 32, "optimizer": "adam", "lr": 0.001, "seed": 0,
                     "model_args": [["width", 16]], "tag": "resnet20"}
    rec["history"] = [{"epoch": e, "train_loss": 1.0 / e, "train_accuracy": 0.5,
                       "epoch_s": 2.0 * e} for e in (1, 2, 3)]
    return rec


def test_migrate_record_v1_to_v2():
    v1 = _v1_record()
    rec = schema.migrate_record(v1)
    assert rec["record_version"] == 2 and v1["record_version"] == 1  # input untouched
    assert rec["precision"] == "fp32" and rec["normalize"] == "none"
    assert rec["config"]["model"]["name"] == "resnet20"
    assert rec["config"]["optim"]["lr"] == 0.001
    from bench.config import from_dict

    assert dict(from_dict(rec["config"]).model.model_args) == {"width": 16}
    assert schema.migrate_record(rec) == rec  # idempotent
    row = {"run_id": "ensemble-x-stack", "tag": "stack", "accuracy": 0.9}  # not a run
    assert schema.migrate_record(row) == row
    assert schema.summary_row(v1)["epoch_s"] == 4.0


def test_v1_record_renders_in_markdown_csv_and_html(tmp_path):
    from bench.report.html import write_html

    v1 = _v1_record()
    bf16 = _record("benchmark_cnn", 0.7, precision="bf16", finished="2025-01-02T00:00:00")
    _write_runs(tmp_path, [v1, bf16])
    recs = load_records(tmp_path)
    assert [r["record_version"] for r in recs] == [2, 2]
    rows = write_summary(tmp_path)
    md = (tmp_path / "summary.md").read_text()
    assert "| resnet20 | digits | fp32 | 3 | **81.00%** |" in md
    assert "| benchmark_cnn | digits | bf16 | 3 | 70.00% |" in md
    table = list(csv.DictReader(io.StringIO((tmp_path / "summary.csv").read_text())))
    assert [(r["tag"], r["precision"]) for r in table] == [("resnet20", "fp32"),
                                                           ("benchmark_cnn", "bf16")]
    text = write_html(tmp_path).read_text()
    assert ">81.00%<" in text and ">bf16<" in text and "<th>prec</th>" in text
    # records handed in directly (not via load_records) are migrated as well
    text = write_html(tmp_path, [v1], force=True).read_text()
    assert ">fp32<" in text and ">81.00%<" in text
    assert len(rows) == 2


# -- the committed tables ---------------------------------------------------------------------

@needs_seeds
def test_committed_seeds_tables_rerender_unchanged(tmp_path):
    """From seeds.json's records, runs.md and summary.csv come out as committed, but for
    the added precision column and the best accuracy marked per data set."""
    _rebuild_seeds(tmp_path)
    write_summary(tmp_path, "seeds suite: all runs", md_name="runs.md")
    new = (tmp_path / "runs.md").read_text().splitlines()
    old = (SEEDS / "runs.md").read_text().splitlines()
    assert len(new) == len(old)
    prec = new[2].split(" | ").index("prec")
    for a, b in zip(new, old):
        cells = a.split(" | ")
        if a.startswith("|") and "---" not in a:
            assert cells[prec] in ("prec", "fp32", "")
            del cells[prec]
        elif a.startswith("|"):
            cells = ["|---" * 11 + "|"]
        assert " | ".join(cells).replace("**", "") == b.replace("**", "")
    bold = {line.split(" | ")[1]: line.split(" | ")[0][2:] for line in new if "**" in line}
    assert bold["images"] == "efficientnet_lite0 (frozen)"  # 89.00%, best on the food set
    assert bold["cifar10-jpeg"] == "efficientnet_lite0 (last 1 stage)"
    assert bold["train"]  # the Dogs vs. Cats ensemble rows keep theirs
    new_csv = list(csv.reader(io.StringIO((tmp_path / "summary.csv").read_text())))
    old_csv = list(csv.reader(io.StringIO((SEEDS / "summary.csv").read_text())))
    assert new_csv[0][-1] == "precision"
    assert [r[:-1] for r in new_csv] == old_csv


@needs_seeds
def test_committed_seeds_summary_and_ensemble_tables_byte_for_byte(tmp_path):
    from bench.ensemble import ensemble_markdown
    from bench.suites.seeds import rewrite_summary

    shutil.copy(SEEDS / "seeds.json", tmp_path / "seeds.json")
    (tmp_path / "plots").mkdir()
    for p in (SEEDS / "plots").iterdir():
        shutil.copy(p, tmp_path / "plots" / p.name)
    new = rewrite_summary(tmp_path).read_text().splitlines()
    old = (SEEDS / "summary.md").read_text().splitlines()
    # the Command/Machine line names this machine (seeds.json of that run has no "machine")
    assert [x for x in new if not x.startswith("Command:")] == \
           [x for x in old if not x.startswith("Command:")]
    rows = json.loads((SEEDS / "seeds.json").read_text())["results"]["001"]["rows"]
    assert ensemble_markdown(rows, 1e-15) == (SEEDS / "ensemble-train.md").read_text()


# -- never replaced by less -------------------------------------------------------------------

@needs_seeds
def test_report_keeps_committed_tables_without_run_records(tmp_path, capsys):
    """`bench report results/seeds` in a fresh clone (seeds.json and tables, no run
    records) keeps runs.md, summary.csv and the plots; --force replaces them."""
    from bench.cli import main

    out = tmp_path / "seeds"
    shutil.copytree(SEEDS, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert main(["report", str(out)]) == 0
    err = capsys.readouterr().err
    for name in ("runs.md", "summary.csv"):
        assert (out / name).read_bytes() == before[Path(name)], name
        assert re.search(rf"kept \S*{name}: it has 25 rows, the new table 0", err), err
    assert "--force" in err
    for p in (out / "plots").iterdir():
        assert p.read_bytes() == before[p.relative_to(out)]
    assert not (out / "report.html").exists()
    assert (out / "summary.md").read_bytes() == before[Path("summary.md")]
    # --force: replaced as asked
    assert main(["report", str(out), "--force"]) == 0
    assert len((out / "summary.csv").read_text().splitlines()) == 1


def test_write_summary_grows_and_keeps(tmp_path, capsys):
    _write_runs(tmp_path, [_record("a", 0.5), _record("b", 0.6)])
    assert len(write_summary(tmp_path)) == 2
    shutil.rmtree(tmp_path / "runs" / "b-digits-1dev-0")
    write_summary(tmp_path)
    assert "| b |" in (tmp_path / "summary.md").read_text()
    assert "kept" in capsys.readouterr().err
    write_summary(tmp_path, force=True)
    assert "| b |" not in (tmp_path / "summary.md").read_text()


# -- across data sets -------------------------------------------------------------------------

def test_best_accuracy_is_marked_per_dataset():
    """100% on a 16-image set does not outrank the best digits run."""
    from bench.report.tables import summary_row

    rows = [summary_row(r) for r in (
        _record("resnet20", 0.9638), _record("benchmark_cnn", 0.7354),
        _record("tiny", 1.0, dataset="tiny16"), _record("tiny2", 0.5, dataset="tiny16"))]
    md = summary_markdown(rows)
    assert "**96.38%**" in md and "**100.00%**" in md
    assert "**73.54%**" not in md and "**50.00%**" not in md


def test_compare_keeps_two_runs_of_one_model_on_one_dataset(tmp_path):
    def summary(path, accs):
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["run_id", "tag", "model", "dataset", "accuracy", "log_loss"])
            for run_id, acc in accs:
                w.writerow([run_id, "resnet20", "resnet20", "digits", acc, 0.3])
        return path

    a = summary(tmp_path / "a.csv", [("resnet20-digits-1", 0.90), ("resnet20-digits-2", 0.95)])
    b = summary(tmp_path / "b.csv", [("resnet20-digits-1", 0.90), ("resnet20-digits-2", 0.70)])
    rows = [r for r in compare.compare_files(a, b) if r["metric"] == "accuracy"]
    assert len(rows) == 2
    assert {r["key"] for r in rows} == {"resnet20 [digits] resnet20-digits-1",
                                        "resnet20 [digits] resnet20-digits-2"}
    assert [r["status"] for r in compare.regressions(rows)] == ["regression"]
    # without run ids two identical keys stay two rows
    with open(tmp_path / "c.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["tag", "dataset", "accuracy"])
        w.writerows([["resnet20", "digits", 0.9], ["resnet20", "digits", 0.8]])
    kind, m, _ = compare.read_metrics(tmp_path / "c.csv")
    assert list(m) == ["resnet20 [digits]", "resnet20 [digits] #2"]
    assert "90.00%" in compare.compare_table(compare.compare_files(a, b))


# -- plots and the page -----------------------------------------------------------------------

def _inside(fig, artist) -> bool:
    fig.canvas.draw()
    box = artist.get_window_extent(fig.canvas.get_renderer())
    W, H = fig.bbox.width, fig.bbox.height
    return box.x0 >= 0 and box.y0 >= 0 and box.x1 <= W and box.y1 <= H


LONG = ("efficientnet_lite0 (last 3 stages, fine-tuned after the frozen stage): 4 groups, "
        "accuracy 69.50%")


@pytest.mark.parametrize("n", [2, 3, 10])
def test_confusion_title_fits_the_figure(n):
    import matplotlib.pyplot as plt

    from bench.report.tables import confusion_figure

    labels = [f"class{i}" for i in range(n)]
    cm = [[int(i == j) * 5 + 1 for j in range(n)] for i in range(n)]
    fig = confusion_figure(cm, labels, LONG)
    ax = fig.axes[0]
    assert _inside(fig, ax.title)
    assert ax.title.get_text().replace("\n", " ") == LONG
    plt.close(fig)


def test_html_confusion_and_curve_titles_fit():
    import matplotlib.pyplot as plt

    from bench.report.html import plot_confusions, plot_training_curves

    rec = _v1_record()
    rec.update(tag=LONG, confusion=[[5, 1], [2, 4]], classes=["cat", "dog"])
    fig = plot_confusions([rec])
    assert all(_inside(fig, ax.title) for ax in fig.axes)
    plt.close(fig)
    fig = plot_training_curves([rec])
    assert all(_inside(fig, ax._left_title) for ax in fig.axes)
    plt.close(fig)


def test_report_title_names_the_folder(tmp_path):
    from bench.report.html import write_html

    out = tmp_path / "proj" / "results"
    _write_runs(out, [_record("resnet20", 0.8)])
    text = write_html(out).read_text()
    title = re.search(r"<title>(.*)</title>", text).group(1)
    assert title == "bench report: proj/results"
    assert "Results: results" not in text
    (out / "seeds.json").write_text("{}")
    assert "seeds suite" in write_html(out, force=True).read_text()
