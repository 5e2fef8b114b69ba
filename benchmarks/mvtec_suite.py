r"""The comparison suite for small data: tuning on inner folds, repeated stratified k-fold, paired CIs.

    python benchmarks/mvtec_suite.py --root $BCL_MVTEC_ROOT --protocol quick --out results/quick \
        --report docs/results.md

Three phases, every one resumable (a finished cell is a JSON file under ``cells/``, a rerun skips it):

1. **tune**: each method's small grid (:attr:`Method.grid`, the same number of points for every trained
   method) is scored on ``inner_folds`` inner folds of repeat 0, fold 0's *training part*; the outer
   test parts are never in these runs. The point with the best mean balanced accuracy is kept.
2. **main**: every method at its chosen point on ``repeats`` × ``folds`` cells (repeat ``r`` is a fresh
   stratified partition with seed ``split_seed + r``), fixed budget on the whole training part,
   evaluated once at the last epoch. The same cells for every method, so differences are paired.
3. **ablation**: each lever of :data:`ABLATIONS` switched on top of a method's chosen point, over the
   folds of repeat 0, paired with that method's main cells of repeat 0.

Several workers may share one suite: start the same command again (one thread each on a small machine);
a worker claims a cell before training it (``<cell>.claim``), so no cell is trained twice.

Differences between methods are paired per cell and given a 95 % interval from the corrected resampled
t-test (Nadeau & Bengio, 2003): cells of one repeat share most of their training images, so the plain
t-interval would be too narrow; the variance is inflated by ``1/n + n_test/n_train``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
import torch

import bcl
from bcl.config import LinearConfig, SupConConfig, load_config
from bcl.data import MVTecAD, stratified_kfold
from bcl.metrics import markdown_table
from bcl.checkpoints import atomic_write_text

__all__ = ["PROTOCOLS", "METHODS", "ABLATIONS", "Protocol", "Suite", "run_suite", "aggregate",
           "paired_difference", "main"]

logger = logging.getLogger(__name__)
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CE_FAMILY = "ce"
EPOCHS_SCALE = "bench.epochs_scale"


@dataclass(frozen=True)
class Method:
    """One row of the comparison: a shipped config, trained by ``stage``, tuned over ``grid``.

    ``grid``: the points tried in the tune phase, each a tuple of ``key=value`` overrides on top of
    ``config`` (the first point, ``()``, is the config as shipped); ``bench.epochs_scale=N`` multiplies the
    protocol's epoch budget instead (a schedule-length choice that follows the protocol). A method with
    ``needs`` probes the encoder of that stage-1 method at its chosen point and is not tuned itself.
    """

    name: str
    label: str
    stage: str  # "supcon" (train_supcon.py) or "linear" (train_linear.py)
    config: str
    family: str = CE_FAMILY  # "ce" rows are the baselines the others are compared with
    needs: Optional[str] = None
    grid: Tuple[Tuple[str, ...], ...] = ((),)
    reported: bool = True


# One tuning budget for every trained method: three points each, one of them the protocol's schedule at
# twice the length, so no method gets a longer schedule than the others can choose (check_definitions
# holds every grid to that). The shared recipe -- Adam 1e-3, crops of 70-100 %, 80 pasted defects per
# class, bf16 -- is in the configs; docs/results.md says how it was chosen. CE's third point doubles the
# pasted defects (the synthetic main job's development runs preferred 160); lr 3e-4 scored 10 points
# below 1e-3 on these inner folds before.
_LONGER = (f"{EPOCHS_SCALE}=2",)
_CE_GRID = ((), ("data.paste_per_class=160",), _LONGER)
METHODS: Dict[str, Method] = {m.name: m for m in [
    Method("ce", "CE (instance sampling)", "linear", "mvtec_ce.yaml", grid=_CE_GRID),
    Method("ce_classaware", "CE + class-aware sampler", "linear", "mvtec_ce_classaware.yaml",
           grid=((), ("sampler.q=0.5",), _LONGER)),
    Method("ce_logitadjusted", "CE + logit adjustment", "linear", "mvtec_ce_logitadjusted.yaml", grid=_CE_GRID),
    Method("focal", "Focal loss", "linear", "mvtec_focal.yaml", grid=_CE_GRID),
    Method("supcon", "SupCon pre-training (kNN only)", "supcon", "mvtec_supcon.yaml", family="contrastive",
           reported=False, grid=((), ("loss.temperature=0.2",), _LONGER)),
    Method("supcon_probe", "SupCon → linear probe", "linear", "mvtec_linear.yaml", family="contrastive",
           needs="supcon"),
    Method("bcl", "BCL (joint, own classifier)", "supcon", "mvtec_bcl.yaml", family="contrastive",
           grid=((), ("loss.temperature=0.2",), _LONGER)),
    Method("bcl_probe", "BCL → linear probe", "linear", "mvtec_linear.yaml", family="contrastive", needs="bcl"),
]}
DEFAULT_METHODS = ("ce", "bcl", "bcl_probe")


@dataclass(frozen=True)
class Lever:
    """An ablation row: ``overrides`` on top of ``method``'s chosen point; ``what`` says what it switches."""

    name: str
    method: str
    what: str
    overrides: Tuple[str, ...]


ABLATIONS: Dict[str, Lever] = {a.name: a for a in [
    Lever("no_paste", "ce", "no mask-guided defect synthesis (paste 0 instead of the chosen point's count)",
          ("data.paste_per_class=0",)),
    Lever("crop_0.3", "ce", "crops down to 30 % of the image (instead of 70 %)", ("data.crop_scale=[0.3,1.0]",)),
    Lever("fp32", "ce", "fp32 instead of bf16 autocast (time and accuracy)", ("train.amp=off",)),
    Lever("px128", "ce", "128 px instead of 64 px", ("data.image_size=128",)),
    Lever("bcl_no_paste", "bcl", "BCL without mask-guided defect synthesis", ("data.paste_per_class=0",)),
]}
DEFAULT_ABLATIONS = ("no_paste", "crop_0.3", "bcl_no_paste")

# What the protocol alone decides: a grid point or lever that set these could move test images into
# training or score on them, so it cannot be written.
PROTOCOL_KEYS = ("data.dataset", "data.root", "data.category", "data.split", "data.n_folds", "data.fold",
                 "data.inner_folds", "data.inner_fold", "data.split_seed", "data.subsample_ratios",
                 "data.test_fraction", "data.val_fraction", "eval.selection", "model.stage1_checkpoint")


@dataclass(frozen=True)
class Protocol:
    """Settings shared by every method and cell, so the comparison is fair."""

    name: str
    encoder: str = "resnet18"
    image_size: int = 64
    epochs: int = 30
    probe_epochs: int = 15
    batch_size: int = 32
    folds: int = 5
    repeats: int = 3
    split_seed: int = 0
    selection: str = "last"  # "val" (epoch chosen on a validation part) is for large data only
    inner_folds: int = 3

    def __post_init__(self) -> None:
        if self.selection not in ("last", "val"):
            raise ValueError(f"protocol selection must be 'last' or 'val', got {self.selection!r}")
        for key in ("epochs", "probe_epochs", "batch_size", "repeats"):
            if getattr(self, key) < 1:
                raise ValueError(f"protocol {key} must be >= 1, got {getattr(self, key)}")
        if self.folds < 2 or self.inner_folds < 2:
            raise ValueError(f"protocol folds and inner_folds must be >= 2, got {self.folds} and {self.inner_folds}")

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)


PROTOCOLS = {
    "quick": Protocol("quick"),  # sized for a 2-core CPU
    "full": Protocol("full", image_size=128, epochs=100, probe_epochs=30, batch_size=64, repeats=5),  # a GPU
}

REPORTED_METRICS = ("balanced_accuracy", "accuracy", "macro_f1", "good_vs_defect_auroc", "knn_balanced_accuracy",
                    "knn_good_vs_defect_auroc")


def check_definitions(methods: Dict[str, Method] = METHODS, levers: Dict[str, Lever] = ABLATIONS) -> None:
    """Refuses what would make the comparison unfair.

    A grid point or lever that sets a protocol key (it could score on test images), and grids that tune
    methods unequally: every tuned method gets as many points and the same schedule lengths to choose from.
    """
    for owner, overrides in ([(f"method {m.name!r} grid", o) for m in methods.values() for o in m.grid]
                             + [(f"ablation {a.name!r}", a.overrides) for a in levers.values()]):
        for override in overrides:
            key = override.partition("=")[0]
            if key in PROTOCOL_KEYS:
                raise ValueError(f"{owner} sets {key}, which only the protocol decides (splits and selection)")
            if key == EPOCHS_SCALE:
                value = override.partition("=")[2]
                try:
                    valid = float(value) > 0
                except ValueError:
                    valid = False
                if not valid:
                    raise ValueError(f"{owner}: {EPOCHS_SCALE} must be a positive number, got {value!r}")
    for lever in levers.values():
        if lever.method not in methods or methods[lever.method].needs:
            raise ValueError(f"ablation {lever.name!r}: method {lever.method!r} must be a tuned method")
    for m in methods.values():
        if m.needs and len(m.grid) > 1:
            raise ValueError(f"method {m.name!r} probes {m.needs!r}'s encoder and has no grid of its own")
    tuned = [m for m in methods.values() if not m.needs]
    for m in tuned[1:]:
        first = tuned[0]
        if len(m.grid) != len(first.grid):
            raise ValueError(f"method {m.name!r} has {len(m.grid)} grid points and {first.name!r} {len(first.grid)}: "
                             "every tuned method gets the same tuning budget")
        if _schedules(m) != _schedules(first):
            raise ValueError(f"method {m.name!r} may choose {EPOCHS_SCALE} from {sorted(_schedules(m))} and "
                             f"{first.name!r} from {sorted(_schedules(first))}: every tuned method gets the same "
                             "schedule lengths to choose from")


def _schedules(method: Method) -> Set[float]:
    """The epoch-budget multipliers ``method``'s grid offers (1.0: the protocol's own budget)."""
    return {float(dict(o.partition("=")[::2] for o in point).get(EPOCHS_SCALE, 1)) for point in method.grid}


@dataclass
class Suite:
    out: Path
    root: str
    category: Optional[str]
    protocol: Protocol
    class_names: List[str] = field(default_factory=list)

    def cell_path(self, phase: str, name: str, repeat: int, fold: int, inner: Optional[int] = None) -> Path:
        tail = f"__i{inner}" if inner is not None else ""
        return self.out / "cells" / phase / f"{name}__r{repeat}__f{fold}{tail}.json"

    def run_dir(self, phase: str, name: str, repeat: int, fold: int, inner: Optional[int] = None) -> Path:
        tail = f"-i{inner}" if inner is not None else ""
        return self.out / "runs" / phase / name / f"r{repeat}-f{fold}{tail}"


def _settings(suite: Suite) -> Dict[str, Any]:
    return {
        "protocol": suite.protocol.as_dict(), "root": str(Path(suite.root).resolve()), "category": suite.category,
        "grid": {m.name: [list(p) for p in m.grid] for m in METHODS.values()},
        "ablations": {a.name: {"method": a.method, "overrides": list(a.overrides)} for a in ABLATIONS.values()},
    }


def _check_or_write_settings(suite: Suite) -> None:
    """Refuses to mix cells of different protocols, grids or levers in one results folder."""
    path = suite.out / "suite.json"
    settings = _settings(suite)
    if path.exists():
        saved = _read_json(path)
        differing = _differences(saved.get("settings", {}), settings)
        if differing:
            raise ValueError(
                f"{suite.out} holds results of a different suite configuration ({'; '.join(differing)}); "
                "use another --out folder or the same settings"
            )
        return
    suite.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"settings": settings, "bcl_version": bcl.__version__}, indent=2))


def _differences(saved: Dict[str, Any], current: Dict[str, Any], prefix: str = "") -> List[str]:
    found = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append(f"{prefix}{key}: {a!r} there, {b!r} now")
    return found


def _final_checkpoint(run_dir: Path, protocol: Protocol) -> Path:
    return run_dir / "checkpoints" / ("best.pt" if protocol.selection == "val" else "last.pt")


def _cell_config(suite: Suite, method: Method, extra: Sequence[str], repeat: int, fold: int,
                 inner: Optional[int], run_dir: Path, stage1_dir: Optional[Path]):
    p = suite.protocol
    epochs = p.probe_epochs if method.needs else p.epochs
    for override in extra:
        key, _, value = override.partition("=")
        if key == EPOCHS_SCALE:
            epochs = max(1, int(round(epochs * float(value))))
    extra = [o for o in extra if not o.startswith(EPOCHS_SCALE + "=")]
    overrides = [
        f"data.root={suite.root}", f"data.image_size={p.image_size}", f"data.n_folds={p.folds}", f"data.fold={fold}",
        f"data.split_seed={p.split_seed + repeat}", f"run.seed={repeat}", f"optim.batch_size={p.batch_size}",
        f"optim.epochs={epochs}", f"eval.selection={p.selection}", "eval.projector_per_class=10",
        "run.progress=false", f"run.output_dir={run_dir.parent}", f"run.name={run_dir.name}",
        "run.overwrite=true",  # a folder without a finished cell is an interrupted try: moved aside, kept
        f"data.category={suite.category}" if suite.category else "data.category=null",
    ]
    if inner is not None:
        overrides += [f"data.inner_folds={p.inner_folds}", f"data.inner_fold={inner}"]
    if stage1_dir is not None:
        overrides.append(f"model.stage1_checkpoint={_final_checkpoint(stage1_dir, p)}")
    else:
        overrides.append(f"model.encoder={p.encoder}")
    schema = SupConConfig if method.stage == "supcon" else LinearConfig
    return load_config(schema, CONFIGS / method.config, [*overrides, *extra])


def _run_cell(suite: Suite, phase: str, row: str, method: Method, extra: Sequence[str], repeat: int, fold: int,
              inner: Optional[int] = None, stage1_dir: Optional[Path] = None) -> Dict[str, Any]:
    from bcl.stages import run_linear, run_supcon  # imported late: the CLI's --help stays fast

    run_dir = suite.run_dir(phase, row, repeat, fold, inner)
    cfg = _cell_config(suite, method, extra, repeat, fold, inner, run_dir, stage1_dir)
    started = time.perf_counter()
    result = (run_supcon if method.stage == "supcon" else run_linear)(cfg, config_stem=method.name)
    cell = {"phase": phase, "row": row, "method": method.name, "repeat": repeat, "fold": fold, "inner": inner,
            "overrides": list(extra), "protocol": suite.protocol.as_dict(), "run_dir": str(result.run_dir),
            "wall_time_s": round(time.perf_counter() - started, 2), "test": result.metrics["test"]}
    atomic_write_text(suite.cell_path(phase, row, repeat, fold, inner), json.dumps(cell, indent=1))
    return cell


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is damaged ({type(error).__name__}: {error}); delete it to rerun that cell") from None


def _read_cell(path: Path) -> Optional[Dict[str, Any]]:
    return _read_json(path) if path.exists() else None


def _with_prerequisites(names: Sequence[str]) -> List[str]:
    ordered: List[str] = []
    for name in names:
        if name not in METHODS:
            raise ValueError(f"unknown method {name!r}; methods: {', '.join(METHODS)}")
        needs = METHODS[name].needs
        for item in ([needs] if needs else []) + [name]:
            if item not in ordered:
                ordered.append(item)
    return ordered


def _claim(path: Path) -> bool:
    """Takes the cell at ``path`` for this process; False while another live process on this machine holds it.

    The claim is ``<cell>.claim`` holding the holder's pid, created exclusively, so two workers of one suite
    (the same command started twice) never train the same cell; a claim whose process died is taken over.
    """
    claim = path.with_suffix(".claim")
    claim.parent.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            handle = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                text, age = claim.read_text().strip(), time.time() - claim.stat().st_mtime
            except FileNotFoundError:
                continue  # released between the two calls
            if not text:
                if age < 60:
                    return False  # being written by the process that just made it
            elif text.isdigit() and _alive(int(text), since=time.time() - age):
                return False
            logger.info("%s: its claim by process %s is stale (the process ended), taken over", path.name, text)
            claim.unlink(missing_ok=True)
            continue
        with os.fdopen(handle, "w") as file:
            file.write(str(os.getpid()))
        return True


def _alive(pid: int, since: float) -> bool:
    """Whether process ``pid`` runs and is the one that wrote a claim at time ``since``.

    A pid reused after the holder ended (a reboot, a later session) started after its claim: not the holder.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    started = _start_time(pid)
    return started is None or started <= since + 2.0  # /proc's start time is in clock ticks since boot


def _start_time(pid: int) -> Optional[float]:
    """When ``pid`` started (seconds since the epoch), from Linux's /proc; None where there is none."""
    try:
        after_name = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + int(after_name[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of proc(5): starttime
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _ensure(suite: Suite, label: str, phase: str, row: str, method: Method, extra: Sequence[str], repeat: int,
            fold: int, inner: Optional[int] = None, stage1_dir: Optional[Path] = None,
            wait: bool = False) -> Optional[Dict[str, Any]]:
    """The cell's result, trained now if no earlier run finished it.

    A cell another worker is training is waited for (``wait``: the caller needs it) or skipped (None).
    """
    path = suite.cell_path(phase, row, repeat, fold, inner)
    while True:
        done = _read_cell(path)
        if done is not None:
            logger.info("%s: done before, skipped", label)
            return done
        if _claim(path):
            break
        if not wait:
            logger.info("%s: another worker is running it, skipped", label)
            return None
        time.sleep(_WAIT_S)
    try:
        done = _read_cell(path)  # finished by another worker between the check and the claim
        if done is not None:
            return done
        logger.info("%s", label)
        return _run_cell(suite, phase, row, method, extra, repeat, fold, inner, stage1_dir)
    finally:
        path.with_suffix(".claim").unlink(missing_ok=True)


_WAIT_S = 30.0


def tune(suite: Suite, names: Sequence[str]) -> Dict[str, int]:
    """Phase 1: each tuned method's grid on the inner folds of repeat 0, fold 0; returns the chosen points."""
    chosen: Dict[str, int] = {}
    p = suite.protocol
    for name in names:
        method = METHODS[name]
        if method.needs:
            continue
        if len(method.grid) == 1:
            chosen[name] = 0
            continue
        scores = []
        for point, overrides in enumerate(method.grid):
            values = []
            for inner in range(p.inner_folds):
                row = f"{name}@{point}"
                cell = _ensure(suite, f"tune {row} [{', '.join(overrides) or 'as shipped'}] inner fold {inner + 1}/"
                               f"{p.inner_folds}", "tune", row, method, overrides, 0, 0, inner, wait=True)
                values.append(cell["test"]["balanced_accuracy"])
            scores.append(float(np.mean(values)))
        chosen[name] = int(np.argmax(scores))  # ties keep the earlier point, the config as shipped first
        # One file per method: suites split over several processes (--methods) never overwrite each other.
        atomic_write_text(suite.out / "tuning" / f"{name}.json",
                          json.dumps({"inner_balanced_accuracy": scores, "chosen": chosen[name]}, indent=1))
        logger.info("tune %s: inner-fold balanced accuracy %s -> point %d", name,
                    ", ".join(f"{s:.3f}" for s in scores), chosen[name])
    return chosen


def _chosen_overrides(name: str, chosen: Dict[str, int]) -> Tuple[str, ...]:
    return METHODS[name].grid[chosen[name]]


def run_suite(suite: Suite, methods: Sequence[str], ablations: Sequence[str] = ()) -> int:
    """Runs every missing cell of ``methods`` (and what they depend on) and of the ``ablations`` levers.

    Returns how many cells were left to other workers (claimed by a live process when this one got there).
    """
    check_definitions()
    for name in ablations:
        if name not in ABLATIONS:
            raise ValueError(f"unknown ablation {name!r}; ablations: {', '.join(ABLATIONS)}")
    dataset = MVTecAD(suite.root, category=suite.category, image_size=suite.protocol.image_size)
    suite.class_names = dataset.class_names
    p = suite.protocol
    # Fold counts too large for the smallest class fail here, not mid-suite; tuning splits repeat 0, fold 0.
    first = [stratified_kfold(dataset, n_splits=p.folds, seed=p.split_seed + r) for r in range(p.repeats)][0][0]
    stratified_kfold(np.asarray(dataset.targets)[first.train_idx], n_splits=p.inner_folds, seed=p.split_seed)
    _check_or_write_settings(suite)
    order = _with_prerequisites([*methods, *(ABLATIONS[a].method for a in ablations)])
    chosen = tune(suite, order)
    cells = [(r, f, m) for r in range(p.repeats) for f in range(p.folds) for m in _with_prerequisites(methods)]
    elsewhere = 0
    for index, (repeat, fold, name) in enumerate(cells, start=1):
        method = METHODS[name]
        source = method.needs or name
        label = f"[{index}/{len(cells)}] {name} repeat {repeat} fold {fold}"
        stage1 = suite.run_dir("main", method.needs, repeat, fold) if method.needs else None
        if method.needs and _read_cell(suite.cell_path("main", method.needs, repeat, fold)) is None:
            # its stage-1 cell is another worker's (whose last.pt is mid-training): that worker probes it next
            logger.info("%s: its %s cell is another worker's, skipped", label, method.needs)
            elsewhere += 1
            continue
        done = _ensure(suite, label, "main", name, method,
                       _chosen_overrides(source, chosen) if not method.needs else (), repeat, fold, stage1_dir=stage1)
        elsewhere += done is None
    for name in ablations:
        lever = ABLATIONS[name]
        for fold in range(p.folds):
            done = _ensure(suite, f"ablation {name} fold {fold}", "ablation", name, METHODS[lever.method],
                           (*_chosen_overrides(lever.method, chosen), *lever.overrides), 0, fold)
            elsewhere += done is None
    return elsewhere


def _read_cells(suite: Suite, phase: str) -> List[Dict[str, Any]]:
    """The finished cells of ``phase``; a cell this suite could not have written is an error naming it."""
    cells = []
    p = suite.protocol
    for path in sorted((suite.out / "cells" / phase).glob("*.json")):
        cell = _read_json(path)
        try:
            where = suite.cell_path(phase, cell["row"], cell["repeat"], cell["fold"], cell.get("inner"))
            fits = (cell["phase"] == phase and where == path and 0 <= cell["fold"] < p.folds
                    and 0 <= cell["repeat"] < (1 if phase != "main" else p.repeats)
                    and (cell.get("inner") is None) == (phase != "tune") and isinstance(cell["test"], dict)
                    # cells from before the "protocol" field are checked by the folder's suite.json alone
                    and cell.get("protocol", p.as_dict()) == p.as_dict()
                    and (cell["row"] in METHODS if phase == "main" else
                         cell["row"] in ABLATIONS if phase == "ablation" else cell["row"].split("@")[0] in METHODS))
        except (KeyError, TypeError):
            fits = False
        if not fits:
            raise ValueError(f"{path} is not a {phase} cell of this suite ({p.repeats} repeats x {p.folds} folds): "
                             "copied from another suite or edited? Move it out of the folder")
        cells.append(cell)
    return cells


def _mean_std(values: Sequence[Optional[float]]) -> Dict[str, Any]:
    present = [v for v in values if v is not None]
    if not present:
        return {"mean": None, "std": None, "n": 0}
    array = np.asarray(present, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0, "n": len(array)}


def paired_difference(a: Dict[Tuple[int, int], float], b: Dict[Tuple[int, int], float], test_over_train: float,
                      level: float = 0.95) -> Dict[str, Any]:
    """Mean of ``a - b`` over the cells both have, with a corrected resampled t-interval.

    Args:
        a: ``{(repeat, fold): score}`` of the first method.
        b: ``{(repeat, fold): score}`` of the second method, subtracted from ``a``.
        test_over_train: ``n_test / n_train`` of one cell (``1 / (folds - 1)`` for k-fold).
        level: Coverage of the interval.

    Returns:
        ``{"mean", "std", "n", "low", "high"}``; the interval is ``mean ± t_{n-1} · std ·
        sqrt(1/n + test_over_train)`` (Nadeau & Bengio, 2003), ``None`` with fewer than two cells.
    """
    from scipy.stats import t as student_t

    shared = sorted(set(a) & set(b))
    differences = np.asarray([a[c] - b[c] for c in shared], dtype=np.float64)
    n = len(differences)
    if n == 0:
        return {"mean": None, "std": None, "n": 0, "low": None, "high": None}
    mean = float(differences.mean())
    if n < 2:
        return {"mean": mean, "std": None, "n": 1, "low": None, "high": None}
    std = float(differences.std(ddof=1))
    half = float(student_t.ppf(0.5 + level / 2, n - 1)) * std * math.sqrt(1.0 / n + test_over_train)
    return {"mean": mean, "std": std, "n": n, "low": mean - half, "high": mean + half}


def _scores(cells: Sequence[Dict[str, Any]], row: str,
            metric: str = "balanced_accuracy") -> Dict[Tuple[int, int], float]:
    return {(c["repeat"], c["fold"]): c["test"][metric] for c in cells
            if c["row"] == row and c["test"].get(metric) is not None}


def _summarise(cells: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    tests = [c["test"] for c in cells]
    entry: Dict[str, Any] = {m: _mean_std([t.get(m) for t in tests]) for m in REPORTED_METRICS}
    # A contrastive-only stage has no classifier: kNN metrics but no recall or confusion matrix.
    classes = list(tests[0].get("per_class_recall", {}))
    entry["per_class_recall"] = {k: _mean_std([t["per_class_recall"].get(k) for t in tests]) for k in classes}
    if "confusion_matrix" in tests[0]:
        entry["confusion_matrix"] = np.sum([t["confusion_matrix"] for t in tests], axis=0).tolist()
    entry["wall_time_s"] = _mean_std([c["wall_time_s"] for c in cells])
    entry["cells"] = sorted((c["repeat"], c["fold"]) for c in cells)
    return entry


def aggregate(main_cells: Sequence[Dict[str, Any]], ablation_cells: Sequence[Dict[str, Any]] = (),
              folds: int = 5) -> Dict[str, Any]:
    """Mean ± sample std per row, and paired differences (corrected t-interval) to CE and the best CE row."""
    ratio = 1.0 / (folds - 1)
    rows = [name for name in METHODS if any(c["row"] == name for c in main_cells)]
    summary: Dict[str, Any] = {"methods": {}, "ablations": {}, "reference": {}}
    for name in rows:
        summary["methods"][name] = _summarise([c for c in main_cells if c["row"] == name])
    ce_rows = [n for n in rows if METHODS[n].family == CE_FAMILY and summary["methods"][n]["balanced_accuracy"]["n"]]
    best_ce = max(ce_rows, key=lambda n: summary["methods"][n]["balanced_accuracy"]["mean"]) if ce_rows else None
    summary["reference"] = {"ce": "ce" if "ce" in rows else None, "best_ce": best_ce}
    for name in rows:
        mine = _scores(main_cells, name)
        entry = summary["methods"][name]
        for key, ref in (("vs_ce", "ce"), ("vs_best_ce", best_ce)):
            if ref is not None and ref in rows and mine:
                entry[key] = {"reference": ref, **paired_difference(mine, _scores(main_cells, ref), ratio)}
    for name in ABLATIONS:
        mine = [c for c in ablation_cells if c["row"] == name]
        if not mine:
            continue
        base = ABLATIONS[name].method
        entry = _summarise(mine)
        base_cells = [c for c in main_cells if c["row"] == base and c["repeat"] == 0]
        entry["base"] = _summarise(base_cells) if base_cells else None
        entry["vs_base"] = {"reference": base,
                            **paired_difference(_scores(mine, name), _scores(base_cells, base), ratio)}
        summary["ablations"][name] = entry
    return summary


def _pct(stat: Optional[Dict[str, Any]]) -> str:
    return "–" if not stat or stat["mean"] is None else f"{100 * stat['mean']:.1f} ± {100 * stat['std']:.1f}"


def _diff(stat: Optional[Dict[str, Any]]) -> str:
    if not stat or stat.get("mean") is None:
        return "–"
    if stat["low"] is None:
        return f"{100 * stat['mean']:+.1f}"
    return f"{100 * stat['mean']:+.1f} [{100 * stat['low']:+.1f}, {100 * stat['high']:+.1f}]"


def results_table(summary: Dict[str, Any]) -> str:
    """The headline: one row per reported method."""
    methods = {n: e for n, e in summary["methods"].items() if METHODS[n].reported}
    best = summary["reference"].get("best_ce")
    header = ["method", "balanced acc.", "Δ vs CE [95 % CI]", f"Δ vs best CE ({best}) [95 % CI]", "macro-F1",
              "AUROC good/defect", "kNN AUROC", "kNN bal. acc.", "min per cell", "cells"]
    rows = []
    for name, entry in methods.items():
        rows.append([METHODS[name].label, _pct(entry["balanced_accuracy"]),
               "(reference)" if name == "ce" else _diff(entry.get("vs_ce")),
               "(reference)" if name == best else _diff(entry.get("vs_best_ce")),
               _pct(entry["macro_f1"]), _pct(entry["good_vs_defect_auroc"]), _pct(entry["knn_good_vs_defect_auroc"]),
               _pct(entry["knn_balanced_accuracy"]), f"{entry['wall_time_s']['mean'] / 60:.1f}",
               str(len(entry["cells"]))])
    return markdown_table(header, rows)


def recall_table(summary: Dict[str, Any]) -> str:
    methods = {n: e for n, e in summary["methods"].items() if METHODS[n].reported and e["per_class_recall"]}
    if not methods:
        return ""
    classes = list(next(iter(methods.values()))["per_class_recall"])
    return markdown_table(["method", *(f"recall {k}" for k in classes)],
                          [[METHODS[name].label, *(_pct(entry["per_class_recall"][k]) for k in classes)]
                           for name, entry in methods.items()])


def ablation_table(summary: Dict[str, Any]) -> str:
    if not summary["ablations"]:
        return ""
    header = ["lever (switched on top of the method's chosen point)", "method", "balanced acc.", "same cells, as tuned",
              "Δ [95 % CI]", "AUROC good/defect", "min per cell", "cells"]
    rows = []
    for name, entry in summary["ablations"].items():
        lever = ABLATIONS[name]
        rows.append([
            lever.what, METHODS[lever.method].label, _pct(entry["balanced_accuracy"]),
            _pct(entry["base"]["balanced_accuracy"]) if entry["base"] else "–", _diff(entry["vs_base"]),
            _pct(entry["good_vs_defect_auroc"]), f"{entry['wall_time_s']['mean'] / 60:.1f}", str(len(entry["cells"]))])
    return markdown_table(header, rows)


def tuning_table(tune_cells: Sequence[Dict[str, Any]], chosen: Dict[str, int]) -> str:
    rows = []
    for name, point in chosen.items():
        method = METHODS[name]
        if len(method.grid) == 1:
            continue
        for index, overrides in enumerate(method.grid):
            mine = [c["test"]["balanced_accuracy"] for c in tune_cells if c["row"] == f"{name}@{index}"]
            rows.append([method.label, ", ".join(f"`{o}`" for o in overrides) or "as shipped", _pct(_mean_std(mine)),
                         str(len(mine)), "**yes**" if index == point else ""])
    return markdown_table(["method", "grid point", "inner-fold balanced acc.", "inner folds", "chosen"], rows)


def write_results(out: Path, summary: Dict[str, Any], cells: Sequence[Dict[str, Any]]) -> None:
    """``results.json`` (summary + cells), ``results_cells.csv`` (one row per cell) and ``results.md``."""
    atomic_write_text(out / "results.json", json.dumps({"summary": summary, "cells": cells}, indent=1))
    rows = []
    for cell in cells:
        row = {k: cell[k] for k in ("phase", "row", "method", "repeat", "fold", "inner", "wall_time_s")}
        row.update({m: cell["test"].get(m) for m in REPORTED_METRICS})
        row.update({f"recall_{k}": v for k, v in cell["test"].get("per_class_recall", {}).items()})
        rows.append(row)
    if rows:
        names = list(dict.fromkeys(k for row in rows for k in row))
        with open(out / "results_cells.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=names)
            writer.writeheader()
            writer.writerows(rows)
    atomic_write_text(out / "results.md", results_table(summary) + "\n")


def write_figures(summary: Dict[str, Any], main_cells: Sequence[Dict[str, Any]], class_names: Sequence[str],
                  folder: Path) -> List[Path]:
    """Writes the per-class recall figure and, per method, a confusion matrix summed over cells.

    The recall figure shows one point per cell (recalls on 2-image classes take few values) with the mean marked.

    Returns:
        The paths of the PNG files written under ``folder``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from bcl.tensorboard import confusion_matrix_figure

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    reported = [n for n in summary["methods"] if METHODS[n].reported and summary["methods"][n]["per_class_recall"]]
    figure = Figure(figsize=(10, 4.5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    width = 0.8 / max(len(reported), 1)
    jitter = np.random.default_rng(0)
    for i, name in enumerate(reported):
        colour = f"C{i}"
        for k, class_name in enumerate(class_names):
            values = [100 * c["test"]["per_class_recall"][class_name] for c in main_cells
                      if c["row"] == name and c["test"]["per_class_recall"].get(class_name) is not None]
            x = k + i * width
            axes.scatter(x + jitter.uniform(-width / 4, width / 4, len(values)), values, s=9, color=colour, alpha=0.45,
                         label=METHODS[name].label if k == 0 else None)
            if values:
                axes.plot([x - width / 2.5, x + width / 2.5], [np.mean(values)] * 2, color=colour, linewidth=2.5)
    axes.set_xticks(np.arange(len(class_names)) + width * (len(reported) - 1) / 2, class_names)
    axes.set_ylabel("test recall, % (a point per cell; bar = mean)")
    axes.set_ylim(-5, 125)  # headroom for the legend above the points
    axes.legend(fontsize=7, ncol=4, loc="upper center")
    figure.tight_layout()
    path = folder / "results_per_class_recall.png"
    figure.savefig(path, dpi=110)
    written.append(path)
    for name in reported:
        if "confusion_matrix" not in summary["methods"][name]:
            continue
        fig = confusion_matrix_figure(np.asarray(summary["methods"][name]["confusion_matrix"]), class_names,
                                      title=f"{METHODS[name].label}: test, summed over cells")
        path = folder / f"results_confusion_{name}.png"
        fig.savefig(path, dpi=100)
        written.append(path)
    return written


def write_embedding_map(suite: Suite, methods: Sequence[str], folder: Path, repeat: int = 0,
                        fold: int = 0) -> Optional[Path]:
    """Writes a 2-D t-SNE map of the encoder features of every image, one panel per method.

    The panels show one cell's encoders; the cell's training images are dots, its test images crosses.

    Returns:
        The path of the PNG written under ``folder``, or None when no method has a final checkpoint for the cell.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from sklearn.manifold import TSNE

    from bcl.engine import extract
    from bcl.stages import load_trained_encoder

    available = [m for m in methods
                 if _final_checkpoint(suite.run_dir("main", m, repeat, fold), suite.protocol).exists()]
    if not available:
        return None
    dataset = MVTecAD(suite.root, category=suite.category, image_size=suite.protocol.image_size)
    test_positions = stratified_kfold(dataset, n_splits=suite.protocol.folds,
                                      seed=suite.protocol.split_seed + repeat)[fold].test_idx
    in_test = np.zeros(len(dataset), dtype=bool)
    in_test[test_positions] = True
    figure = Figure(figsize=(5.5 * len(available), 5))
    FigureCanvasAgg(figure)
    for panel, name in enumerate(available, start=1):
        encoder, _ = load_trained_encoder(
            str(_final_checkpoint(suite.run_dir("main", name, repeat, fold), suite.protocol)),
            setting=f"the {name} checkpoint",
        )
        features = extract(_FeaturesOnly(encoder), dataset, suite.protocol.image_size,
                           torch.device("cpu"))["features"].numpy()
        points = TSNE(n_components=2, perplexity=min(30, len(features) - 1), init="pca",
                      random_state=0).fit_transform(features)
        axes = figure.add_subplot(1, len(available), panel)
        labels = np.asarray(dataset.targets)
        for k, class_name in enumerate(dataset.class_names):
            for held_out, marker in ((False, "o"), (True, "x")):
                chosen = (labels == k) & (in_test == held_out)
                axes.scatter(points[chosen, 0], points[chosen, 1], s=(6 if k == 0 else 22) * (2 if held_out else 1),
                             marker=marker, color=f"C{k}", alpha=0.5 if k == 0 else 0.9,
                             label=f"{class_name} ({'test' if held_out else 'train'})")
        axes.set_title(f"{METHODS[name].label}: encoder of repeat {repeat}, fold {fold}\n"
                       "dots: its training images, crosses: its test images", fontsize=9)
        axes.set_xticks([])
        axes.set_yticks([])
        axes.legend(fontsize=6, ncol=2)
    figure.tight_layout()
    path = folder / "results_tsne.png"
    figure.savefig(path, dpi=100)
    return path


class _FeaturesOnly(torch.nn.Module):
    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        features = self.encoder(images)
        return {"features": features, "logits": features[:, :1]}


REFERENCE_NUMBERS = """\
These come from other protocols and are **not comparable** to the table above; they are here so a
reader can place it.

- **Defect type on MVTec transistor**: the only published defect-*type* figure we know of is 74 %
  (a GAN-similarity method); anomaly detectors with ImageNet features separate good from defective at
  image AUROC 0.999 (PatchCore, WideResNet-50). Both use pretrained features; ours are from scratch.
- **Reference coursework** (the project this library grew out of): best 91.67 % *validation accuracy*
  on a 12-image validation set, ImageNet-pretrained ResNet-50 fine-tuned with Adam on MVTec transistor
  subsampled 2 : 1 : 1 : 1 : 1 (good : each defect). Differs from ours: ImageNet weights (we train from
  scratch: none can be downloaded here), plain accuracy on 12 images (one image is 8.3 points) rather
  than balanced accuracy over repeated stratified folds of the full long-tailed set, and selection on the
  reported split. Its five runs ship as `configs/coursework_*.yaml`; they need the ImageNet weights.
- **BCL paper** (Zhu et al., CVPR 2022), as listed on Papers with Code and its benchmark pages:
  CIFAR-100-LT top-1 53.9 % (imbalance 100) and 56.6 % (imbalance 50) with ResNet-32; iNaturalist 2018
  top-1 71.8 % with ResNet-50. Differs from ours: natural-image benchmarks with 100 to 8,142 classes and
  thousands of images, hundreds of epochs on GPUs, and top-1 accuracy on balanced test sets; here, five
  classes, 313 images of one industrial object, small defects, a short CPU budget.
"""


def _num_images(cells: Sequence[Dict[str, Any]]) -> int:
    """The test parts of one row's folds in one repeat partition the dataset."""
    first = cells[0]
    return sum(sum(c["test"]["per_class_support"].values()) for c in cells
               if c["row"] == first["row"] and c["repeat"] == first["repeat"])


def write_report(path: Path, suite: Suite, summary: Dict[str, Any], cells: Dict[str, List[Dict[str, Any]]],
                 chosen: Dict[str, int], figures: Sequence[Path], machine: str, command: str,
                 reading: str = "") -> None:
    """``docs/results.md``: headline, recalls, ablation, tuning, figures, protocol, machine, wall time."""
    relative = [os.path.relpath(f, path.parent) for f in figures]
    every = [c for phase in cells.values() for c in phase]
    minutes = {phase: sum(c["wall_time_s"] for c in phase_cells) / 60 for phase, phase_cells in cells.items()}
    p = suite.protocol.as_dict()
    selection = ("trained on the whole training part of each cell for a fixed budget and evaluated once, at "
                 "the last epoch (no epoch or checkpoint is chosen on a few images)" if p["selection"] == "last"
                 else "the epoch chosen on a stratified validation part carved from each cell's training part")
    lines = [
        "# Results: BCL against cross-entropy baselines on MVTec AD transistor",
        "",
        ("Generated by `python benchmarks/mvtec_suite.py`; every number below comes from the cells it ran. "
         "Do not edit by"),
        "hand: rerun the command (finished cells are kept) to regenerate.",
        "",
        f"**Protocol `{p['name']}`**: {p['encoder']} from scratch (no pretrained weights), {p['image_size']} px, "
        f"a budget of {p['epochs']} epochs for every trained model, scaled only where a method's tuning chose a "
        f"longer schedule (below), {p['probe_epochs']} for linear probes on a frozen stage-1 encoder; batch "
        f"{p['batch_size']}; stratified {p['folds']}-fold cross-validation repeated {p['repeats']} "
        f"times with different fold assignments (split seeds {p['split_seed']}..{p['split_seed'] + p['repeats'] - 1}) "
        f"over all {_num_images(cells['main'])} images of the category (train and test pooled, the natural long "
        f"tail); the same cells for every method; {selection}. Each method's settings were chosen on "
        f"{p['inner_folds']} inner folds of repeat 0, fold 0's training part, from a grid of the same size for "
        "every trained method (below); the outer test parts were never used for a choice.",
        "",
        f"**Command**: `{command}`",
        "",
        f"**Machine**: {machine}. **Training time**: {sum(minutes.values()):.0f} min for {len(every)} runs "
        f"({', '.join(f'{phase} {m:.0f} min' for phase, m in minutes.items())}).",
        "",
        "## Headline",
        "",
        results_table(summary),
        "",
        "Balanced accuracy is the mean per-class recall (the headline: 87 % of the images are `good`, so plain",
        "accuracy rewards ignoring defects); mean ± sample standard deviation over cells. Δ: the mean per-cell",
        "difference (percentage points) to the CE baseline and to the best CE row, on the same cells, with a 95 %",
        "interval from the corrected resampled t-test (Nadeau & Bengio 2003: the variance of the mean difference is",
        "inflated by 1/n + n_test/n_train, since cells share training images; the plain t-interval would be",
        "narrower). An interval that excludes 0 is a difference these cells support. AUROC good/defect is from",
        "the classifier's probability of `good`; kNN AUROC scores each test image by its cosine similarity to the",
        "nearest `good` training embeddings (k = 20, faiss).",
        "",
        "## Per-class recall",
        "",
        recall_table(summary),
        "",
    ]
    if summary["ablations"]:
        lines += ["## Ablation: what each lever buys", "",
                  f"Over the {p['folds']} cells of repeat 0; Δ is paired with the method's own main cells of "
                  "repeat 0.", "",
                  ablation_table(summary), ""]
    lines += ["## Tuning (inner folds only)", "", tuning_table(cells.get("tune", []), chosen), ""]
    if reading:
        lines += ["## Reading", "", reading.strip(), ""]
    lines += ["## Figures", ""]
    lines += [f"![{Path(f).stem}]({f})" for f in relative]
    lines += ["", "## Reported elsewhere (different protocols)", "", REFERENCE_NUMBERS]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "\n".join(lines) + "\n")


def reproduce_command(argv: Sequence[str]) -> str:
    """The command that reruns the suite and rewrites the report (``--aggregate-only`` left out)."""
    env_root = os.environ.get("BCL_MVTEC_ROOT")
    kept = ["$BCL_MVTEC_ROOT" if env_root and token == env_root else token
            for token in argv if token != "--aggregate-only"]
    prefix = [] if "--root" in kept else ["BCL_MVTEC_ROOT=/path/to/mvtec_ad/transistor"]
    return " ".join([*prefix, "python benchmarks/mvtec_suite.py", *kept])


def machine_description() -> str:
    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores, "
            f"{'CUDA ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}, "
            f"Python {platform.python_version()}, torch {torch.__version__}, bcl {bcl.__version__}")


_OVERRIDABLE = (("epochs", int), ("probe-epochs", int), ("image-size", int), ("folds", int), ("batch-size", int),
                ("repeats", int), ("inner-folds", int), ("split-seed", int), ("encoder", str), ("selection", str))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python benchmarks/mvtec_suite.py", description=__doc__.split("\n")[0])
    parser.add_argument("--root", default=os.environ.get("BCL_MVTEC_ROOT"),
                        help="MVTec AD root (with --category) or a category folder; default $BCL_MVTEC_ROOT")
    parser.add_argument("--category", default="transistor")
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="quick")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default results/<protocol>)")
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=list(METHODS), metavar="METHOD",
                        help=f"methods to run (default: {' '.join(DEFAULT_METHODS)}): {', '.join(METHODS)}")
    parser.add_argument("--ablations", nargs="*", default=list(DEFAULT_ABLATIONS), choices=list(ABLATIONS),
                        metavar="LEVER", help=f"levers to ablate (default: {' '.join(DEFAULT_ABLATIONS)}): "
                        f"{', '.join(ABLATIONS)}; none with an empty list")
    parser.add_argument("--aggregate-only", action="store_true", help="only rebuild results from finished cells")
    parser.add_argument("--figures", type=Path, default=None, help="folder for the PNG figures (default <out>)")
    parser.add_argument("--report", type=Path, default=None, help="also write this markdown report (docs/results.md)")
    parser.add_argument("--reading", type=Path, default=None,
                        help="markdown file with a reading of the results, put in the report (keep it in docs/)")
    for name, kind in _OVERRIDABLE:
        parser.add_argument(f"--{name}", type=kind, default=None, help="override the protocol's value")
    return parser


def resolve_protocol(args: argparse.Namespace) -> Protocol:
    base = PROTOCOLS[args.protocol].as_dict()
    changes = {name.replace("-", "_"): getattr(args, name.replace("-", "_")) for name, _ in _OVERRIDABLE}
    return Protocol(**{**base, **{k: v for k, v in changes.items() if v is not None}})


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    if not args.root:
        sys.stderr.write("error: give --root (the MVTec AD root or a category folder) or set BCL_MVTEC_ROOT\n")
        return 2
    try:
        protocol = resolve_protocol(args)
    except ValueError as error:
        sys.stderr.write(f"error: {error}\n")
        return 2
    out = args.out or Path("results") / protocol.name
    suite = Suite(out, str(args.root), args.category, protocol)
    sys.stdout.write(f"Suite: {json.dumps(_settings(suite)['protocol'])}\nMethods: "
                     f"{', '.join(_with_prerequisites(args.methods))}; "
                     f"ablations: {', '.join(args.ablations) or 'none'}\n"
                     f"Machine: {machine_description()}\n")
    sys.stdout.flush()
    started = time.perf_counter()
    try:
        if not args.aggregate_only:
            elsewhere = run_suite(suite, args.methods, args.ablations)
            if elsewhere:
                sys.stdout.write(f"{elsewhere} cells are other workers' of this suite; no report from this one: "
                                 "rerun with --aggregate-only once they finish\n")
                return 0
        else:
            _check_or_write_settings(suite)
        cells = {phase: _read_cells(suite, phase) for phase in ("tune", "main", "ablation")}
        chosen = {p.stem: _read_json(p)["chosen"] for p in sorted((out / "tuning").glob("*.json"))}
    except (ValueError, FileNotFoundError) as error:
        sys.stderr.write(f"error: {error}\n")
        return 2
    if not cells["main"]:
        sys.stderr.write(f"error: no finished main cells in {out}\n")
        return 2
    summary = aggregate(cells["main"], cells["ablation"], folds=protocol.folds)
    summary["tuning"] = chosen
    write_results(out, summary, [c for phase in cells.values() for c in phase])
    class_names = next(list(c["test"]["per_class_recall"]) for c in cells["main"] if "per_class_recall" in c["test"])
    figures = write_figures(summary, cells["main"], class_names, args.figures or out)
    tsne = write_embedding_map(suite, [m for m in ("ce", "bcl") if m in summary["methods"]], args.figures or out)
    if args.report:
        reading = args.reading.read_text() if args.reading else ""
        write_report(args.report, suite, summary, cells, chosen, figures + ([tsne] if tsne else []),
                     machine_description(), reproduce_command(argv if argv is not None else sys.argv[1:]), reading)
    sys.stdout.write("\n" + results_table(summary) + "\n\n" + ablation_table(summary) + "\n")
    total = sum(c["wall_time_s"] for phase in cells.values() for c in phase)
    sys.stdout.write(f"\n{sum(map(len, cells.values()))} runs, {total / 60:.1f} min of training in all "
                     f"({(time.perf_counter() - started) / 60:.1f} min this sitting). Results in {out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
