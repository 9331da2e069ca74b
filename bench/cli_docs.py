"""``docs/cli.md``, generated from the ``bench`` argparse parser: every subcommand and flag
with its help text and default, behind a hand-written introduction.

Regenerate after adding or changing a flag (``tests/test_cli.py`` fails while the page and
``bench --help`` disagree)::

    python -m bench.cli_docs > docs/cli.md
"""

from __future__ import annotations

import argparse
import sys
import textwrap

INTRO = """\
# Command line reference

`bench --help` lists the subcommands and `bench COMMAND --help` the flags of one; this page
holds the same text in one place. It is generated from the parser
(`python -m bench.cli_docs > docs/cli.md`; a test fails while the two disagree), so every
flag below is one the code accepts.

Conventions, the same for every subcommand:

* Bad input (a flag's value, a file, a folder) ends in one line on stderr naming the flag or
  file, the value and what is accepted, with exit status 2, and nothing already written is
  lost. `--debug` (anywhere on the line) or `BENCH_DEBUG=1` shows the traceback of an
  unexpected error (exit 1 without it, also in one line).
* A flag a suite does not take is refused, never ignored.
* Ctrl-C stops a run (exit 130); the same command again resumes it.
* `--dataset SPEC` is `digits` (bundled), a folder or `.zip` of images, or `tfds:NAME`
  ([data.md](data.md)); training flags and their defaults: [training.md](training.md);
  what the numbers mean: [measuring.md](measuring.md).
"""

# What each command does, beyond its one-line help (hand-written; a command without an entry
# shows its help alone).
DETAILS = {
    "run": "`--suite quick` (the default) trains the report-003 benchmark CNN and ResNet-20 at "
           "32x32 on `--dataset` (default digits), evaluates each on a held-out test split and "
           "prints and writes `OUT/summary.md` and `OUT/summary.csv`. `--suite zoo --dataset "
           "SPEC [--time-budget 20m] [--preset fast|best]`: the zoo on your data within a time "
           "budget: scratch, frozen-feature heads, fine-tuned backbone, ensembles (average, "
           "stack, greedy selection); `OUT/leaderboard.md/.csv/.html`, a Pareto plot, the best "
           "pipeline exported to `OUT/best/`; what the budget skipped is listed; a killed run "
           "resumes ([zoo.md](zoo.md)). `--suite seeds --data-root DIR [--sections 000,003] "
           "[--epochs N] [--max-per-class N]`: the five source reports replayed on the real "
           "data in `DIR` (laid out as `../shared/assets`); writes `results/seeds/summary.md` "
           "with the reports' figures beside ours, and plots; `--epochs`/`--max-per-class` "
           "apply to every run (a quick look; the runs get their own ids) "
           "([results.md](results.md#the-seeds-suite)).",
    "predict": "Predictions of a leaderboard row (network, backbone + head, or ensemble) on new "
               "images; unreadable files are listed and skipped; needs no training data.",
    "train": "Writes a run record; options, defaults, resuming: [training.md](training.md).",
    "features": "Frozen pretrained embeddings, one HDF5 file per backbone, reused when "
                "backbone, weights checksum, input size and data fingerprint match.",
    "ensemble": "A logistic head per backbone, a head on the concatenation, their average and "
                "their stack, on the same test split; rows added to the table.",
    "group": "Clusters the classes a run confuses (symmetrised validation confusion; "
             "average-linkage or spectral) and scores its test predictions per group, beside "
             "random groupings of the same sizes; writes `groups.json`, "
             "`grouped_confusion.csv/png`.",
    "speed": "A timm-style throughput table: train/infer img/s, step ms, params, GFLOPs/image "
             "(XLA cost analysis), TFLOP/s, MFU where the peak is known "
             "([measuring.md](measuring.md)).",
    "compare": "The change between two `speed.json` / pytest-benchmark JSON / `summary.csv` "
               "files; exit 1 on regressions.",
    "report": "Regenerates `summary.csv`, `summary.md`, `report.html` (sortable table, "
              "embedded plots) and `plots/*.png` from the run records (in a seeds folder the "
              "plain table goes to `runs.md` and `summary.md` is rebuilt from `seeds.json`).",
    "inspect": "Know the data before the leaderboard: class balance, original size and aspect "
               "histograms, unreadable files with reasons, exact (sha256) and near duplicates "
               "(64-bit pHash, band-indexed search, then a pixel-correlation check) within and "
               "across splits, colour-statistics outliers by IQR (report 001), low-resolution "
               "images; writes `inspect.md/.json`, `contact.png` and `exclusions.txt` (for "
               "`bench train --exclude`; [data.md](data.md#exclusions-and-bench-inspect)).",
    "models": "Registered models with input size, preprocessing, parameter count and source.",
}

WIDTH = 96  # usage lines are wrapped at this width whatever the terminal


def _subcommands(parser: argparse.ArgumentParser):
    """``(name, one-line help, parser)`` of each subcommand, in ``bench --help``'s order."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: a.help or "" for a in sub._choices_actions}
    return [(name, helps.get(name, ""), p) for name, p in sub.choices.items()]


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _default(action: argparse.Action) -> str:
    """The default as the table shows it: blank for none, for a switch and for a list."""
    d = action.default
    if d is None or d is argparse.SUPPRESS or isinstance(action, (
            argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return ""
    if isinstance(d, (tuple, list)):
        d = ",".join(str(v) for v in d)
    return f"`{d}`" if str(d) != "" else ""


def _command_section(name: str, summary: str, p: argparse.ArgumentParser) -> list[str]:
    """One subcommand: its summary, usage and a table of flags per argument group."""
    fmt = argparse.HelpFormatter(p.prog, width=WIDTH)
    fmt.add_usage(p.usage, p._actions, p._mutually_exclusive_groups, prefix="")
    L = [f"## bench {name}", "", _cell(summary).rstrip(".") + ".", ""]
    if name in DETAILS:
        L += [textwrap.fill(DETAILS[name], WIDTH, break_long_words=False,
                            break_on_hyphens=False), ""]
    L += ["```", fmt.format_help().strip(), "```", ""]
    for group in p._action_groups:
        actions = [a for a in group._group_actions if not isinstance(a, argparse._HelpAction)]
        if not actions:
            continue
        title = group.title if group.title not in ("options", "optional arguments") else "flags"
        L += [f"**{title}**" + (f": {_cell(group.description)}" if group.description else ""),
              "", "| flag | default | what it does |", "|---|---|---|"]
        for a in actions:
            invocation = fmt._format_action_invocation(a)
            L.append(f"| `{_cell(invocation)}` | {_default(a)} | "
                     f"{_cell(fmt._expand_help(a) if a.help else '')} |")
        L.append("")
    return L


def cli_markdown(parser: argparse.ArgumentParser | None = None) -> str:
    """The text of ``docs/cli.md`` for ``parser`` (default: ``bench``'s)."""
    if parser is None:
        from .cli import build_parser

        parser = build_parser()
    commands = _subcommands(parser)
    L = [INTRO, "| command | what it does |", "|---|---|"]
    L += [f"| [`bench {n}`](#bench-{n}) | {_cell(h)} |" for n, h, _ in commands]
    L.append("")
    for name, summary, p in commands:
        L += _command_section(name, summary, p)
    return "\n".join(L).rstrip("\n") + "\n"


if __name__ == "__main__":
    sys.stdout.write(cli_markdown())
