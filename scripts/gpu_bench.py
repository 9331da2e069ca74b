"""The GPU check of issue 14 in one command: the zoo's throughput against PyTorch and timm in
fp32 and bf16, and CIFAR-10 time-to-accuracy.

Run through ``scripts/gpu_bench.sh`` (which installs carried wheels, unpacks the carried data
and keeps a log); see ``results/gpu/README.md``. Jobs, in this order:

1. ``speed-bf16``: ``bench speed --precision bf16 --vs torch,timm`` per model (``MODELS``),
   at each model's default input size and ``BATCH`` (halved on out-of-memory).
2. ``tta-resnet20``: ``bench train`` of ResNet-20, bf16, onecycle, crop+flip on the CIFAR-10
   JPEG copy; seconds of training (after compilation) to each validation accuracy target.
3. ``speed-fp32``: as 1 in fp32.
4. ``tta-simplenet``: the same for SimpleNet, the zoo's bet for 93%.
5. ``compile``: ``torch+compile`` rows (bf16) beside the eager ones, model by model.

Every job is timed against a deadline (``--budget-s`` from the start, or ``--deadline``):
one whose estimate does not fit is skipped and listed as skipped in the outputs; nothing is
made up. ``speed.json``/``speed.md`` and ``tta.json``/``tta.md`` are rewritten after every
job, so a run killed at its limit still leaves what it measured, and ``--resume`` carries on
after a crash (a job that was running when the process died is listed as crashed, not rerun).

``--tiny`` is the CPU-sized version (two small models, batch 4, one timed step, a one-epoch
run on ``digits``) that ``tests/test_gpu_script.py`` runs in CI so this script cannot rot.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MODELS = ("resnet20", "resnet50", "inception_v3", "xception", "mobilenet_v2",
          "efficientnet_lite0", "vgg16")
# Global batch per model: 256 for the ImageNet-sized ones (the harness halves it on
# out-of-memory), more for the 32x32 ResNet-20, which 256 images would leave launch-bound.
BATCH = {"resnet20": 1024}
DEFAULT_BATCH = 256
PEERS = ("torch", "timm")
COMPILED_PEER = "torch+compile"

# Rough seconds per job on the H200 (compile + timing, ours and the eager peers), only to
# decide what still fits before the deadline; they are guesses until a run measures them
# (each later job of the same model uses the measured time of its first precision instead).
ESTIMATE_S = {"resnet20": 30, "resnet50": 50, "inception_v3": 80, "xception": 60,
              "mobilenet_v2": 45, "efficientnet_lite0": 50, "vgg16": 40}
COMPILE_ESTIMATE_S = 120  # torch.compile of a train and an eval graph
TTA_ESTIMATE_S = {"resnet20": 90, "simplenet": 120}

# The measured bf16 matmul rate of the H200 here (8192^3 through PyTorch, 769-798 TFLOP/s,
# /work/.library/device/KINDS.md): rows get MFU against it beside the 989.4 spec figure.
MEASURED_PEAKS = {"H200": {"bf16": 790.0}, "H100": {"bf16": 790.0}}
MEASURED_PEAK_NOTE = ("bf16 measured peak 790 TFLOP/s: an 8192x8192x8192 bf16 matmul "
                      "through PyTorch on this workplace's H200 (769-798 TFLOP/s); spec "
                      "dense bf16 989.4 TFLOP/s")

AIRBENCH = {"name": "airbench94", "accuracy": 0.9401, "seconds": 3.83, "device": "A100",
            "data": "lossless CIFAR-10 (50,000 train, 10,000 test)"}

# Time-to-accuracy recipes: flags of `bench train` (the dataset and output are added).
TTA = {
    "resnet20": ["--model", "resnet20", "--precision", "bf16", "--batch-size", "512",
                 "--epochs", "10", "--optimizer", "nesterov", "--lr", "0.4",
                 "--schedule", "onecycle", "--warmup-epochs", "2", "--weight-decay", "5e-4",
                 "--label-smoothing", "0.1", "--augment", "crop_flip",
                 "--eval-batch-size", "1000", "--tag", "tta-resnet20"],
    "simplenet": ["--model", "simplenet", "--model-arg", "dropout=0.0", "--precision", "bf16",
                  "--batch-size", "512", "--epochs", "15", "--optimizer", "nesterov",
                  "--lr", "0.1", "--schedule", "onecycle", "--warmup-epochs", "3",
                  "--weight-decay", "5e-4", "--label-smoothing", "0.1",
                  "--augment", "crop_flip", "--eval-batch-size", "1000",
                  "--tag", "tta-simplenet"],
}
TARGETS = (0.90, 0.93, 0.94)
TINY_TTA = ["--model", "resnet20", "--precision", "fp32", "--batch-size", "32",
            "--max-per-class", "30", "--epochs", "1", "--schedule", "onecycle", "--lr", "0.1",
            "--augment", "crop_flip", "--eval-batch-size", "128", "--tag", "tta-tiny"]


def log(*parts) -> None:
    print(f"[gpu_bench {time.strftime('%H:%M:%S')}]", *parts, flush=True)


def nvidia_smi() -> dict | None:
    """``{'name', 'driver'}`` of the first GPU from ``nvidia-smi``, or None without one."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=20, check=True).stdout.strip().splitlines()
    except (subprocess.SubprocessError, OSError):
        return None
    if not out:
        return None
    name, _, driver = out[0].partition(",")
    return {"name": name.strip(), "driver": driver.strip(), "count": len(out)}


def measured_peaks(device_kind: str, given: str | None) -> dict[str, float]:
    from bench.speed.harness import parse_peaks

    if given is not None:
        return parse_peaks(given)
    for key, peaks in MEASURED_PEAKS.items():
        if key.lower() in device_kind.lower():
            return dict(peaks)
    return {}


def time_to_target(history: list[dict], targets=TARGETS) -> dict:
    """From a run record's history: cumulative training seconds (``epoch_s``: the steps
    only, after compilation, no evaluation) to the first epoch whose validation accuracy
    reaches each target, and the best validation accuracy with its time."""
    total, best, best_at, reached = 0.0, None, None, {}
    for row in history:
        total += float(row["epoch_s"])
        acc = row.get("val_accuracy")
        if acc is None:
            continue
        if best is None or acc > best:
            best, best_at = acc, {"epoch": row["epoch"], "train_s": total}
        for t in targets:
            if acc >= t and f"{t:.2f}" not in reached:
                reached[f"{t:.2f}"] = {"epoch": row["epoch"], "train_s": total}
    return {"targets": {f"{t:.2f}": reached.get(f"{t:.2f}") for t in targets},
            "best_val_accuracy": best, "best_val_at": best_at, "train_s_total": total}


class Bench:
    def __init__(self, args):
        self.args = args
        self.out = Path(args.out)
        self.work = Path(args.work)
        self.out.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        self.deadline = args.deadline or (time.time() + args.budget_s)
        self.rows: list[dict] = []
        self.jobs: list[dict] = []
        self.tta: list[dict] = []
        if args.resume:
            self._load()

    # -- bookkeeping -----------------------------------------------------------------------

    def _load(self) -> None:
        state = self.work / "state.json"
        if state.exists():
            data = json.loads(state.read_text())
            self.rows, self.jobs, self.tta = data["rows"], data["jobs"], data["tta"]
            for job in self.jobs:
                if job["status"] == "running":
                    job.update(status="crashed", note="the process died during this job "
                               "(not rerun on --resume)")
            log(f"resuming: {sum(j['status'] == 'done' for j in self.jobs)} jobs done")

    def done(self, key: str) -> bool:
        return any(j["key"] == key and j["status"] in ("done", "crashed", "failed")
                   for j in self.jobs)

    def left(self) -> float:
        return self.deadline - time.time()

    def run_job(self, key: str, estimate: float, fn) -> None:
        if self.done(key):
            return
        if self.left() < estimate:
            self.jobs.append({"key": key, "status": "skipped",
                              "note": f"time budget: {self.left():.0f} s left, estimate "
                                      f"{estimate:.0f} s"})
            log(f"{key}: skipped ({self.jobs[-1]['note']})")
            self.save()
            return
        job = {"key": key, "status": "running", "estimate_s": estimate}
        self.jobs.append(job)
        self.save()
        log(f"{key}: start ({self.left():.0f} s left, estimate {estimate:.0f} s)")
        t0 = time.time()
        try:
            fn()
            job["status"] = "done"
        except Exception as e:  # noqa: BLE001 -- the error is the row; the other jobs go on
            job.update(status="failed", note=f"{type(e).__name__}: {str(e)[:500]}")
            log(f"{key}: FAILED: {job['note']}")
        job["seconds"] = time.time() - t0
        log(f"{key}: {job['status']} in {job['seconds']:.1f} s")
        self.save()

    def seconds_of(self, key: str) -> float | None:
        for j in self.jobs:
            if j["key"] == key and j["status"] == "done":
                return j["seconds"]
        return None

    # -- the jobs --------------------------------------------------------------------------

    def speed_job(self, model: str, precision: str) -> None:
        from bench.speed.harness import speed

        a = self.args
        rows = speed([model], batch_size=a.batch_size or BATCH.get(model, DEFAULT_BATCH),
                     precision=precision, warmup=a.warmup, repeats=a.repeats, vs=a.peers,
                     progress=log, measured_peaks=self.peaks)
        self.rows += rows

    def compile_job(self, model: str, precision: str) -> None:
        from bench.speed.peers import measure_peer

        ours = next((r for r in self.rows if r["model"] == model and r["framework"] == "jax"
                     and r["precision"] == precision and r.get("train_img_per_s")), None)
        if ours is None:
            raise RuntimeError(f"no {precision} row of ours for {model} to compare with")
        prow = measure_peer(COMPILED_PEER, model, batch_size=ours["batch"],
                            image_size=ours["image_size"], precision=precision,
                            warmup=self.args.warmup, repeats=self.args.repeats)
        for phase in ("train", "infer"):
            a, b = ours.get(f"{phase}_img_per_s"), prow.get(f"{phase}_img_per_s")
            ours[f"{phase}_vs_{COMPILED_PEER}"] = a / b if a and b else None
        i = max(k for k, r in enumerate(self.rows)
                if r["model"] == model and r["precision"] == precision)
        self.rows.insert(i + 1, prow)
        log(f"{model} [{COMPILED_PEER}, {precision}] train "
            f"{prow.get('train_img_per_s') or 0:,.1f} img/s ({prow.get('note')})")

    def tta_job(self, name: str, flags: list[str]) -> None:
        from bench.cli import build_parser
        from bench.config import from_args
        from bench.train import train

        argv = ["train", *flags, "--dataset", self.args.data, "--out", str(self.work / "train"),
                "--quiet", "--force"]
        args = build_parser().parse_args(argv)
        cfg = from_args(args)
        entry = {"name": name, "command": "bench " + shlex.join(argv), "status": "running"}
        self.tta.append(entry)
        try:
            rec = train(cfg, args.out, quiet=True, force=True,
                        cache_dir=str(self.work / "cache"))
        except Exception as e:
            entry.update(status="failed", error=f"{type(e).__name__}: {e}")
            raise
        entry.update(status=rec["status"], run_id=rec["run_id"], model=rec["model"],
                     dataset=rec["dataset"], global_batch=rec["global_batch"],
                     steps_per_epoch=rec["steps_per_epoch"],
                     epochs=rec["epochs_completed"], compile_s=rec["compile_s"],
                     wall_s=rec["wall_s"], test_accuracy=rec["accuracy"],
                     best_epoch=rec["best_epoch"], train_img_per_s=rec["train_img_per_s"],
                     epoch_img_per_s=rec["epoch_img_per_s"],
                     history=[{k: h.get(k) for k in ("epoch", "epoch_s", "train_loss",
                                                     "val_accuracy", "val_loss", "lr")}
                              for h in rec["history"]],
                     **time_to_target(rec["history"], self.targets))
        self.pack_runs()
        log(f"{name}: test {rec['accuracy']:.4f}, best val {entry['best_val_accuracy']}, "
            f"{entry['train_s_total']:.1f} s of training; targets {entry['targets']}")

    # -- outputs ---------------------------------------------------------------------------

    def meta(self) -> dict:
        a = self.args
        return {"script": "scripts/gpu_bench.py", "script_command": shlex.join(sys.argv),
                "tiny": a.tiny, "gpu": self.gpu, "measured_peaks": self.peaks or None,
                "measured_peak_note": MEASURED_PEAK_NOTE if self.peaks else None,
                "models": list(a.models), "precisions": list(a.precisions),
                "peers": list(a.peers), "budget_s": a.budget_s, "jobs": self.jobs,
                "xla_mem_fraction": os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION")}

    def save(self) -> None:
        from bench.speed.harness import speed_markdown, write_speed
        from runtime import io as bio

        a = self.args
        bio.write_json(self.work / "state.json",
                       {"rows": self.rows, "jobs": self.jobs, "tta": self.tta})
        command = (f"bench speed --models {','.join(a.models)} --precision "
                   f"{','.join(a.precisions)} --vs {','.join(a.peers)}"
                   + (f",{COMPILED_PEER}" if a.compile else "")
                   + f" --batch-size {a.batch_size or DEFAULT_BATCH} --warmup {a.warmup} "
                     f"--repeats {a.repeats}"
                   + (" (resnet20 at " + str(BATCH["resnet20"]) + ")" if not a.batch_size
                      else "")
                   + f", one model and precision at a time, by {shlex.join(sys.argv)}")
        meta = self.meta()
        json_path, md_path = write_speed(self.rows, self.out, "speed", command=command,
                                         extra=meta)
        saved = json.loads(json_path.read_text())
        md = speed_markdown(self.rows, saved)
        gpu = self.gpu or {}
        md += "\n## This run\n\n"
        md += f"- GPU (nvidia-smi): {gpu.get('name', 'none')}, driver {gpu.get('driver', '-')}\n"
        if self.peaks:
            md += f"- {MEASURED_PEAK_NOTE}\n"
        md += f"- XLA_PYTHON_CLIENT_MEM_FRACTION: {meta['xla_mem_fraction']}\n"
        md += "- jobs: " + "; ".join(
            f"{j['key']} {j['status']}" + (f" ({j['seconds']:.0f} s)" if "seconds" in j else "")
            + (f" [{j['note']}]" if j.get("note") else "") for j in self.jobs) + "\n"
        bio.write_text(md_path, md)
        self.write_tta()

    def write_tta(self) -> None:
        from runtime import io as bio

        bio.write_json(self.out / "tta.json",
                       {"kind": "gpu-bench-tta", "gpu": self.gpu, "reference": AIRBENCH,
                        "targets": list(self.targets), "runs": self.tta,
                        "jobs": [j for j in self.jobs if j["key"].startswith("tta")],
                        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        "how": "train_s: sum of the epochs' epoch_s (the train steps only, "
                               "after ahead-of-time compilation; validation and test "
                               "evaluation not counted) up to the first epoch whose "
                               "validation accuracy reaches the target"})
        gpu = self.gpu or {}
        lines = ["# CIFAR-10 time-to-accuracy", "",
                 f"- GPU: {gpu.get('name', 'none (CPU)')}, driver {gpu.get('driver', '-')}",
                 f"- reference: {AIRBENCH['name']} {100 * AIRBENCH['accuracy']:.2f}% in "
                 f"{AIRBENCH['seconds']} s on an {AIRBENCH['device']} ({AIRBENCH['data']})",
                 "- ours: the JPEG (quality 75) copy of CIFAR-10: lossy, so not directly "
                 "comparable; 45,000 train / 5,000 validation (carved from train) / 10,000 "
                 "test. Time to a target: training seconds after compilation, summed over "
                 "the epochs, to the first epoch whose VALIDATION accuracy reaches it; test "
                 "accuracy from the best-validation weights at the end.", "",
                 "| run | status | epochs | batch | compile s | "
                 + " | ".join(f"s to {100 * t:.0f}% val" for t in self.targets)
                 + " | best val (epoch, s) | test acc | train s total | epoch img/s |",
                 "|" + "---|" * (9 + len(self.targets))]
        for r in self.tta:
            if r["status"] not in ("complete",):
                lines.append(f"| {r['name']} | {r['status']} {r.get('error', '')} |"
                             + " |" * (8 + len(self.targets)))
                continue
            cells = []
            for t in self.targets:
                hit = r["targets"].get(f"{t:.2f}")
                cells.append(f"{hit['train_s']:.2f} (ep {hit['epoch']})" if hit else
                             "not reached")
            b = r["best_val_at"] or {}
            lines.append(
                f"| {r['name']} | {r['status']} | {r['epochs']} | {r['global_batch']} | "
                f"{r['compile_s']:.1f} | " + " | ".join(cells)
                + f" | {100 * (r['best_val_accuracy'] or 0):.2f}% (ep {b.get('epoch')}, "
                  f"{b.get('train_s', 0):.2f} s) | {100 * r['test_accuracy']:.2f}% | "
                  f"{r['train_s_total']:.2f} | {r['epoch_img_per_s']:,.0f} |")
        lines += ["", "Commands:", ""] + [f"- {r['name']}: `{r['command']}`" for r in self.tta]
        skipped = [j for j in self.jobs if j["key"].startswith("tta") and
                   j["status"] != "done"]
        if skipped:
            lines += ["", "Not run: " + "; ".join(f"{j['key']} {j['status']} "
                                                  f"({j.get('note', '')})" for j in skipped)]
        bio.write_text(self.out / "tta.md", "\n".join(lines) + "\n")

    def pack_runs(self) -> None:
        """The run folders (records, histories, curves; no weights) as ``runs.tar.gz``."""
        runs = self.work / "train" / "runs"
        if not runs.exists():
            return
        with tarfile.open(self.out / "runs.tar.gz", "w:gz") as tar:
            for path in sorted(runs.rglob("*")):
                if path.is_file() and path.suffix not in (".npz", ".npy"):
                    tar.add(path, arcname=str(path.relative_to(runs.parent)))

    # -- the plan --------------------------------------------------------------------------

    def run(self) -> int:
        import jax

        from runtime.versions import versions

        self.gpu = nvidia_smi()
        kind = jax.devices()[0].device_kind
        self.peaks = measured_peaks(kind, self.args.peak_tflops)
        self.targets = TARGETS if not self.args.tiny else (0.5, 0.9)
        log(f"device: {jax.devices()[0].platform} {kind}; nvidia-smi: {self.gpu}; "
            f"versions: {versions()}; {self.left():.0f} s budget")
        a = self.args
        est = (lambda m: ESTIMATE_S.get(m, 30)) if not a.tiny else (lambda m: 0)
        plan = []
        order = [p for p in ("bf16", "fp32") if p in a.precisions]
        for i, prec in enumerate(order):
            for m in a.models:
                first = f"speed-{order[0]}-{m}"

                def e(m=m, first=first, i=i):  # a later precision: the first one's time
                    measured = self.seconds_of(first) if i else None
                    return 1.2 * measured if measured else est(m)

                plan.append((f"speed-{prec}-{m}", e,
                             lambda m=m, prec=prec: self.speed_job(m, prec)))
            if i == 0 and a.tta:
                name = a.tta[0]
                plan.append((f"tta-{name}", lambda name=name: 0 if a.tiny else
                             TTA_ESTIMATE_S.get(name, 120),
                             lambda name=name: self.tta_job(name, self.tta_flags(name))))
        for name in a.tta[1:]:
            plan.append((f"tta-{name}", lambda name=name: 0 if a.tiny else
                         TTA_ESTIMATE_S.get(name, 120),
                         lambda name=name: self.tta_job(name, self.tta_flags(name))))
        if a.compile and "bf16" in a.precisions:
            for m in a.compile_models:
                plan.append((f"compile-bf16-{m}", lambda: COMPILE_ESTIMATE_S,
                             lambda m=m: self.compile_job(m, "bf16")))
        for key, estimate, fn in plan:
            self.run_job(key, estimate(), fn)
        self.save()
        self.pack_runs()
        counts = {s: sum(j["status"] == s for j in self.jobs)
                  for s in ("done", "skipped", "failed", "crashed")}
        log(f"finished: {counts}; wrote {self.out}/speed.json, speed.md, tta.json, tta.md"
            + (", runs.tar.gz" if (self.out / "runs.tar.gz").exists() else ""))
        return 0 if counts["done"] else 1

    def tta_flags(self, name: str) -> list[str]:
        return TINY_TTA if self.args.tiny else TTA[name]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "results" / "gpu"),
                   help="where the results go (default: $OUT if set, else results/gpu/)")
    p.add_argument("--work", help="scratch: data cache, run folders, state "
                   "(default: /tmp/gpu-bench-work, or OUT/work in --tiny)")
    p.add_argument("--tiny", action="store_true", default=os.environ.get("GPU_BENCH_TINY") == "1",
                   help="CPU-sized: resnet20 and small_cnn, batch 4, one timed step, a "
                        "one-epoch run on digits (also GPU_BENCH_TINY=1)")
    p.add_argument("--data", help="CIFAR-10 folder or .zip (default: /tmp/cifar10-jpeg as "
                   "gpu_bench.sh unpacks it; digits in --tiny)")
    p.add_argument("--models", help="comma-separated (default: the seven of issue 14)")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--peers", help="default torch,timm")
    p.add_argument("--tta", help="time-to-accuracy runs, comma-separated from "
                   f"{','.join(TTA)} (default: all; 'none' for none)")
    p.add_argument("--no-compile", dest="compile", action="store_false",
                   help="no torch+compile rows")
    p.add_argument("--compile-models", default="resnet50,resnet20,mobilenet_v2,"
                   "efficientnet_lite0,vgg16,inception_v3,xception")
    p.add_argument("--batch-size", type=int, help="one batch for all (default: 256, "
                   "ResNet-20 1024)")
    p.add_argument("--warmup", type=int)
    p.add_argument("--repeats", type=int)
    p.add_argument("--peak-tflops", help="measured peaks, e.g. bf16=790 (default: 790 for "
                   "bf16 on an H100/H200, none elsewhere)")
    p.add_argument("--budget-s", type=float, default=450.0,
                   help="seconds from the start after which no job is started whose "
                        "estimate does not fit (default 450)")
    p.add_argument("--deadline", type=float, help="the same as an absolute Unix time "
                   "(gpu_bench.sh passes one to a --resume attempt)")
    p.add_argument("--resume", action="store_true",
                   help="continue after a crash from WORK/state.json")
    a = p.parse_args(argv)
    tiny = a.tiny
    a.models = tuple(m.strip() for m in (a.models or ("resnet20,small_cnn" if tiny else
                                                      ",".join(MODELS))).split(",") if m.strip())
    a.precisions = tuple(x.strip() for x in a.precisions.split(",") if x.strip())
    a.peers = tuple(x.strip() for x in (a.peers if a.peers is not None else
                                        ",".join(PEERS)).split(",") if x.strip())
    tta = a.tta if a.tta is not None else ("resnet20" if tiny else ",".join(TTA))
    a.tta = () if tta == "none" else tuple(t.strip() for t in tta.split(",") if t.strip())
    for t in a.tta:
        if t not in TTA:
            p.error(f"--tta {t!r}: not one of {', '.join(TTA)}")
    a.compile_models = tuple(m.strip() for m in a.compile_models.split(",") if m.strip())
    if tiny:
        a.compile = False  # torch.compile takes minutes on a CPU
        a.batch_size = a.batch_size or 4
    a.warmup = a.warmup if a.warmup is not None else (0 if tiny else 2)
    a.repeats = a.repeats if a.repeats is not None else (1 if tiny else 10)
    a.data = a.data or ("digits" if tiny else "/tmp/cifar10-jpeg")
    a.work = a.work or (str(Path(a.out) / "work") if tiny else "/tmp/gpu-bench-work")
    return a


def main(argv=None) -> int:
    args = parse_args(argv)
    from bench.speed.harness import parse_precisions
    from bench.speed.peers import check_peer

    import models

    parse_precisions(args.precisions)
    for peer in args.peers:
        check_peer(peer)
    for m in args.models + args.compile_models:
        models.get_model_info(m)  # unknown names fail before any work
    if not args.tiny and not args.data.startswith("tfds:") and args.tta \
            and not Path(args.data).exists():
        log(f"no CIFAR-10 at {args.data}: the time-to-accuracy runs will fail "
            "(scripts/prepare_gpu_carry.sh makes .data/, gpu_bench.sh unpacks it)")
    return Bench(args).run()


if __name__ == "__main__":
    sys.exit(main())
