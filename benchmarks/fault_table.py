"""Fault injection through the real command line: bad inputs and faults, and what a user sees for each.

Runs ``train_supcon.py`` / ``train_linear.py`` as subprocesses on tiny embedded data (each case in its own
folder under ``--out``), and prints one markdown row per case: the input, the exit status, the last line
on stderr, and a verdict:

* ``clear``: refused (exit 2, or 130/143 for a signal) with one ``error:`` / ``interrupted`` line naming
  the expected key, file or setting, and no traceback;
* ``unclear``: refused, but with a traceback or without naming what it should;
* ``silent``: accepted (exit 0) although the input is bad;
* ``mixed``: two writers both wrote into one run folder.

Run:  OMP_NUM_THREADS=1 python benchmarks/fault_table.py [--out /tmp/faults] [--only SUBSTRING]
It takes a few minutes on two cores (about 60 interpreter starts plus a few one-epoch runs).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = ["data.synthetic_counts=[16,6,6,6,6]", "data.image_size=32", "data.n_folds=2", "optim.warmup_epochs=0",
        "optim.batch_size=8", "eval.selection=last", "eval.knn_k=5", "eval.projector_per_class=0",
        "run.progress=false", "run.tensorboard=false", "optim.epochs=1"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


@dataclass
class Case:
    name: str  # what was tried, as the table shows it
    argv: Callable[[Path], List[str]]  # the command line after the script, given the case's folder
    expect: str  # a word the message must hold (the key, file or setting at fault)
    script: str = "train_supcon.py"
    setup: Optional[Callable[[Path], None]] = None
    codes: tuple = (2,)
    runner: Optional[Callable[["Case", Path], subprocess.CompletedProcess]] = None
    notes: List[str] = field(default_factory=list)


def cli(script: str, argv: List[str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), *argv], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def tiny(folder: Path, name: str, *extra: str) -> List[str]:
    return [*TINY, f"run.output_dir={folder}", f"run.name={name}", *extra]


# Shared fixtures, made once: a stage-1 run (finished), a paused stage-1 run, a finished stage-2 run.
FIXTURES: dict = {}


def fixtures(base: Path) -> dict:
    if not FIXTURES:
        runs = base / "fixtures"
        cli("train_supcon.py", tiny(runs, "s1", "model.proj_dim=16")).check_returncode()
        cli("train_supcon.py", tiny(runs, "s1-paused", "model.proj_dim=16", "optim.epochs=2",
                                    "run.stop_after_epochs=1")).check_returncode()
        cli("train_linear.py", tiny(runs, "s2", "model.finetune=true")).check_returncode()
        FIXTURES.update(s1=runs / "s1", paused=runs / "s1-paused", s2=runs / "s2")
    return FIXTURES


def copy_run(base: Path, which: str, folder: Path) -> Path:
    target = folder / "run"
    shutil.copytree(fixtures(base)[which], target)
    (target / ".lock").unlink(missing_ok=True)
    return target


def signal_run(sig: signal.Signals) -> Callable:
    def run(case: Case, folder: Path) -> subprocess.CompletedProcess:
        argv = [sys.executable, str(ROOT / case.script), *tiny(folder, "r", "model.proj_dim=16", "optim.epochs=3")]
        proc = subprocess.Popen(argv, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        while not (folder / "r" / "checkpoints" / "last.pt").exists() and proc.poll() is None:
            time.sleep(0.02)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
        leftovers = sorted(p.name for p in (folder / "r").rglob(".*.tmp"))
        if leftovers:
            case.notes.append(f"temporary files left: {leftovers}")
        resumed = cli(case.script, ["--resume", str(folder / "r")])
        case.notes.append("resumed to the end" if resumed.returncode == 0 else "resume FAILED")
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)
    return run


def concurrent(argv_a: Callable, argv_b: Callable, script: str = "train_supcon.py") -> Callable:
    """Two processes on one run folder at once: one must win, the other be refused naming the owner."""
    def run(case: Case, folder: Path) -> subprocess.CompletedProcess:
        procs = [subprocess.Popen([sys.executable, str(ROOT / script), *argv(folder)], cwd=ROOT, env=ENV,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for argv in (argv_a, argv_b)]
        results = [p.communicate(timeout=600) for p in procs]
        codes = [p.returncode for p in procs]
        run_dir = folder / "run" if (folder / "run").exists() else folder / "r"
        log = run_dir / "metrics.jsonl"
        epochs = ([json.loads(line)["epoch"] for line in log.read_text().splitlines() if line.strip()]
                  if log.exists() else [])
        if len(epochs) != len(set(epochs)):
            case.notes.append(f"MIXED: log epochs {epochs}")
        if sorted(codes) != [0, 2]:
            case.notes.append(f"exit codes {codes}: not exactly one winner")
        loser = codes.index(2) if 2 in codes else 1
        return subprocess.CompletedProcess([], codes[loser], results[loser][0], results[loser][1])
    return run


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def cases() -> List[Case]:
    c = []
    add = c.append
    # --- numbers and keys -------------------------------------------------------------------------
    for override, key in [("optim.lr=nan", "optim.lr"), ("optim.lr=inf", "optim.lr"), ("optim.lr=-1", "optim.lr"),
                          ("loss.temperature=nan", "loss.temperature"), ("loss.temperature=inf", "loss.temperature"),
                          ("loss.temperature=0", "loss.temperature"), ("loss.alpha=-1", "loss.alpha"),
                          ("optim.epochs=0", "optim.epochs"), ("optim.batch_size=1", "optim.batch_size"),
                          ("optim.lr=fast", "optim.lr"), ("optim.lrr=0.1", "optim.lrr"), ("foo.bar=1", "foo"),
                          ("optim.lr", "optim.lr"), ("data.image_size=8", "data.image_size"),
                          ("data.fold=5", "data.fold"), ("sampler.q=2", "sampler.q"), ("sampler.q=nan", "sampler.q"),
                          ("data.crop_scale=[0.9,0.5]", "data.crop_scale"),
                          ("model.encoder=resnet999", "model.encoder"),
                          ("loss.name=triplet", "loss.name"), ("eval.selection=maybe", "eval.selection"),
                          ("eval.knn_k=0", "eval.knn_k"), ("run.checkpoint_every=0", "run.checkpoint_every"),
                          ("data.imbalance_factor=0.5", "data.imbalance_factor"),
                          ("data.class_names=[a,b]", "data.class_names"),
                          ("optim.schedule=step", "optim.decay_epochs"),
                          ("train.amp=fp16", "train.amp"), ("train.sync_batchnorm=true", "sync_batchnorm"),
                          ("run.name=a/b", "path component"), ("run.name=..", "path component")]:
        add(Case(f"`{override}`", lambda f, o=override: tiny(f, "r", o), key))
    add(Case("`data.split=generated` with the test seed equal to the training seed",
             lambda f: tiny(f, "r", "data.split=generated", "data.synthetic_test_seed=0"), "synthetic_test_seed"))
    add(Case("`--config` a missing file", lambda f: ["--config", str(f / "none.yaml")], "none.yaml"))
    add(Case("`--config` a folder", lambda f: ["--config", str(f)], "is a folder"))
    add(Case("`--config` invalid YAML", lambda f: ["--config", str(write(f / "bad.yaml", b"optim: [1,\n"))],
             "bad.yaml"))
    add(Case("`--config` a YAML list", lambda f: ["--config", str(write(f / "list.yaml", b"- 1\n- 2\n"))],
             "list.yaml"))
    # --- data and weights --------------------------------------------------------------------------
    add(Case("`data.dataset=mvtec` with a root that does not exist",
             lambda f: tiny(f, "r", "data.dataset=mvtec", "data.root=/nonexistent/mvtec"), "/nonexistent/mvtec"))
    add(Case("`data.dataset=folder` on an empty folder",
             lambda f: tiny(f, "r", "data.dataset=folder", f"data.root={f / 'empty'}"), "empty",
             setup=lambda f: (f / "empty").mkdir()))
    add(Case("`data.dataset=folder` with a corrupt image",
             lambda f: tiny(f, "r", "data.dataset=folder", f"data.root={f / 'imgs'}"), "broken.png",
             setup=lambda f: [write(f / "imgs" / cls / "broken.png", b"not a png") for cls in ("a", "b")]))
    add(Case("`model.weights=imagenet` offline (`model.allow_download=false`, empty hub cache)",
             lambda f: tiny(f, "r", "model.weights=imagenet", "model.allow_download=false"), "hub"))
    add(Case("`model.weights=` a file that does not exist", lambda f: tiny(f, "r", "model.weights=/nonexistent.pt"),
             "/nonexistent.pt"))
    add(Case("`model.weights=` a text file", lambda f: tiny(f, "r", f"model.weights={write(f / 'w.pt', b'hello')}"),
             "w.pt"))
    # --- run folders --------------------------------------------------------------------------------
    add(Case("`run.output_dir` is a file", lambda f: tiny(f, "r", f"run.output_dir={write(f / 'file', b'x')}"),
             "file"))
    # (a chmod-ed folder would not stop root, so an unwritable place stands in for a read-only disk)
    add(Case("`run.output_dir` not writable (`/proc/bcl-runs`)",
             lambda f: tiny(f, "r", "run.output_dir=/proc/bcl-runs"), "/proc/bcl-runs"))
    add(Case("a new run under the name of a finished run", lambda f: tiny(f, "run", "model.proj_dim=16"), "--resume",
             setup=lambda f: copy_run(f.parent, "s1", f)))
    add(Case("`--resume` a folder that does not exist", lambda f: ["--resume", str(f / "nothing")], "nothing"))
    add(Case("`--resume` a folder without a checkpoint", lambda f: ["--resume", str(f)], "no checkpoint"))
    add(Case("`--resume` with overrides", lambda f: ["--resume", str(f), "optim.epochs=3"], "--resume"))
    add(Case("`--resume` a stage-1 run with train_linear.py", lambda f: ["--resume", str(f / "run")],
             "train_supcon.py", script="train_linear.py", setup=lambda f: copy_run(f.parent, "paused", f)))
    add(Case("`--resume` a stage-2 run with train_supcon.py", lambda f: ["--resume", str(f / "run")],
             "train_linear.py", setup=lambda f: copy_run(f.parent, "s2", f)))
    add(Case("`--resume` a run whose last.pt is garbage", lambda f: ["--resume", str(f / "run")], "last.pt",
             setup=lambda f: write(copy_run(f.parent, "paused", f) / "checkpoints" / "last.pt", b"garbage")))
    add(Case("`--resume` a run whose last.pt is truncated", lambda f: ["--resume", str(f / "run")], "last.pt",
             setup=lambda f: (lambda p: p.write_bytes(p.read_bytes()[:1000]))(
                 copy_run(f.parent, "paused", f) / "checkpoints" / "last.pt")))
    # --- stage 2 ------------------------------------------------------------------------------------
    add(Case("linear probe without `model.stage1_checkpoint`", lambda f: tiny(f, "r"), "model.stage1_checkpoint",
             script="train_linear.py"))
    add(Case("`model.stage1_checkpoint=` a missing file", lambda f: tiny(f, "r", "model.stage1_checkpoint=/no.pt"),
             "/no.pt", script="train_linear.py"))
    add(Case("`model.stage1_checkpoint=` a text file",
             lambda f: tiny(f, "r", f"model.stage1_checkpoint={write(f / 'c.pt', b'text')}"), "c.pt",
             script="train_linear.py"))
    add(Case("`model.stage1_checkpoint=` a stage-2 checkpoint",
             lambda f: tiny(f, "r", f"model.stage1_checkpoint={f / 'run' / 'checkpoints' / 'last.pt'}"), "stage-1",
             script="train_linear.py", setup=lambda f: copy_run(f.parent, "s2", f)))
    add(Case("`model.stage1_checkpoint=` from a different split (`data.n_folds=3`)",
             lambda f: tiny(f, "r", f"model.stage1_checkpoint={f / 'run' / 'checkpoints' / 'last.pt'}",
                            "data.n_folds=3"), "different split", script="train_linear.py",
             setup=lambda f: copy_run(f.parent, "s1", f)))
    # --- faults while running ---------------------------------------------------------------------
    add(Case("diverging run (`optim.lr=1e6`, fine-tuned linear classifier)",
             lambda f: tiny(f, "r", "model.finetune=true", "optim.lr=1e6", "optim.batch_size=4"), "lower optim.lr",
             script="train_linear.py"))
    add(Case("diverging weights with finite losses (`optim.lr=1e6`, stage 1)",
             lambda f: tiny(f, "r", "model.proj_dim=16", "optim.lr=1e6"), "lower optim.lr"))
    add(Case("SIGINT during training", lambda f: [], "--resume", codes=(130,), runner=signal_run(signal.SIGINT)))
    add(Case("SIGTERM during training", lambda f: [], "--resume", codes=(143,), runner=signal_run(signal.SIGTERM)))
    add(Case("two new runs with one name at once", lambda f: [], "r", runner=concurrent(
        lambda f: tiny(f, "r", "model.proj_dim=16", "optim.epochs=2"),
        lambda f: tiny(f, "r", "model.proj_dim=16", "optim.epochs=2"))))
    add(Case("two `--resume`s of one run at once", lambda f: [], "in use by process",
             setup=lambda f: copy_run(f.parent, "paused", f), runner=concurrent(
                 lambda f: ["--resume", str(f / "run")], lambda f: ["--resume", str(f / "run")])))
    return c


def verdict(case: Case, done: subprocess.CompletedProcess) -> str:
    if any(note.startswith("MIXED") for note in case.notes):
        return "mixed"
    if done.returncode == 0:
        return "silent"
    lines = done.stderr.strip().splitlines()
    last = lines[-1] if lines else ""
    one_line = last.startswith(("error:", "interrupted")) and "Traceback" not in done.stderr
    troubles = [n for n in case.notes if "FAILED" in n or "left" in n or "not exactly" in n]
    return "clear" if done.returncode in case.codes and one_line and case.expect in last and not troubles else "unclear"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/bcl-faults"))
    parser.add_argument("--only", default="", help="run the cases whose name holds this text")
    args = parser.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    torch.set_num_threads(1)
    selected = [c for c in cases() if args.only in c.name]
    rows, counts = [], {}
    for number, case in enumerate(selected, 1):
        folder = args.out / f"case{number:02d}"
        folder.mkdir()
        if case.setup:
            case.setup(folder)
        done = case.runner(case, folder) if case.runner else cli(case.script, case.argv(folder))
        outcome = verdict(case, done)
        counts[outcome] = counts.get(outcome, 0) + 1
        shown = (done.stderr.strip().splitlines() or done.stdout.strip().splitlines() or [""])[-1]
        shown = shown.replace("|", "\\|").replace(str(args.out), "$OUT")
        notes = ("; " + "; ".join(case.notes)) if case.notes else ""
        rows.append(f"| {number} | {case.name} ({case.script}) | {done.returncode} | {shown[:220]}{notes} "
                    f"| {outcome} |")
        print(rows[-1], flush=True)
    print("\n| # | input or fault | exit | last line on stderr | verdict |\n|---|---|---|---|---|")
    print("\n".join(rows))
    print("\n" + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())), f"(of {len(selected)})")
    return 0 if set(counts) <= {"clear"} else 1


if __name__ == "__main__":
    sys.exit(main())
