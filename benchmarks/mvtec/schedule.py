"""The phases over the cells, shared between workers, resumed from finished records, within a time budget.

1. **tune**: each tuned method's grid is scored on ``inner_folds`` inner folds of repeat 0, fold 0's
   *training part*; the outer test parts are never in these runs. The point with the best mean balanced
   accuracy is kept.
2. **main**: every method at its chosen point on ``repeats`` × ``folds`` cells (repeat ``r`` is a fresh
   stratified partition with seed ``split_seed + r``), fixed budget on the whole training part, evaluated
   once at the last epoch. The same cells for every method, so differences are paired.
3. **ablation**: each lever switched on top of a method's chosen point, over the folds of repeat 0,
   paired with that method's main cells of repeat 0.

A finished cell's record is never trained again. Several workers may share one folder: a worker claims
a cell before training it (``<cell>.claim``). ``stop_after_minutes`` starts a cell only when it is
expected to end within the budget (judged by the suite's finished cells of the same kind), so a
working session stops at a cell boundary and the next one continues from the committed records.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from bcl.checkpoints import atomic_write_text
from bcl.data import MVTecAD, stratified_kfold

from .cells import Suite, check_or_write_settings, final_checkpoint, read_cell, read_json, run_cell
from .definitions import Method, check_definitions

__all__ = ["Progress", "chosen_points", "open_suite", "planned_cells", "run_suite", "with_prerequisites"]

logger = logging.getLogger(__name__)
_WAIT_S = 30.0


@dataclass
class Progress:
    """What a sitting left undone: cells other workers hold, and cells left for the time budget."""

    elsewhere: int = 0
    left_for_time: int = 0


class _OutOfTime(Exception):
    pass


class _Clock:
    """The sitting's wall-clock budget and the expected duration of a cell, from the finished ones."""

    def __init__(self, suite: Suite, minutes: Optional[float]) -> None:
        self.deadline = None if minutes is None else time.monotonic() + 60.0 * minutes
        self.durations: Dict[Tuple[str, str], List[float]] = {}
        for path in (suite.out / "cells").glob("*/*.json"):
            cell = read_json(path)
            self.record(cell)

    def record(self, cell: Dict[str, Any]) -> None:
        for key in ((cell["phase"], cell["row"].split("@")[0]), ("method", cell["method"])):
            self.durations.setdefault(key, []).append(float(cell["wall_time_s"]))

    def expected_s(self, phase: str, row: str, method: str) -> float:
        """Mean time of finished cells of this row (or else of this method); 0 for a kind never run."""
        for key in ((phase, row.split("@")[0]), ("method", method)):
            if self.durations.get(key):
                return float(np.mean(self.durations[key]))
        return 0.0

    def allows(self, seconds: float) -> bool:
        return self.deadline is None or time.monotonic() + seconds <= self.deadline


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


def _ensure(suite: Suite, clock: _Clock, label: str, phase: str, row: str, method: Method, extra: Sequence[str],
            repeat: int, fold: int, inner: Optional[int] = None, stage1_dir: Optional[Path] = None,
            wait: bool = False, also_s: float = 0.0) -> Optional[Dict[str, Any]]:
    """The cell's result, trained now if no earlier run finished it.

    A cell another worker is training is waited for (``wait``: the caller needs it) or skipped (None). A
    cell not expected to end (with ``also_s`` more seconds of work that must follow it) within the
    sitting's budget raises :class:`_OutOfTime`.
    """
    path = suite.cell_path(phase, row, repeat, fold, inner)
    while True:
        done = read_cell(path)
        if done is not None:
            logger.info("%s: done before, skipped", label)
            return done
        if not clock.allows(clock.expected_s(phase, row, method.name) + also_s):
            raise _OutOfTime
        if _claim(path):
            break
        if not wait:
            logger.info("%s: another worker is running it, skipped", label)
            return None
        time.sleep(_WAIT_S)
    try:
        done = read_cell(path)  # finished by another worker between the check and the claim
        if done is not None:
            return done
        logger.info("%s", label)
        done = run_cell(suite, phase, row, method, extra, repeat, fold, inner, stage1_dir)
        clock.record(done)
        return done
    finally:
        path.with_suffix(".claim").unlink(missing_ok=True)


def with_prerequisites(suite: Suite, names: Sequence[str]) -> List[str]:
    """``names`` with the methods whose cells they use put first, each once."""
    ordered: List[str] = []
    for name in names:
        if name not in suite.methods:
            raise ValueError(f"unknown method {name!r} for protocol {suite.protocol.name!r}; its methods: "
                             f"{', '.join(suite.methods)}")
        method = suite.methods[name]
        source = method.needs or method.knn_of
        for item in ([source] if source else []) + [name]:
            if item not in ordered:
                ordered.append(item)
    return ordered


def _tune(suite: Suite, clock: _Clock, names: Sequence[str]) -> Dict[str, int]:
    """Phase 1: each tuned method's grid on the inner folds of repeat 0, fold 0; returns the chosen points."""
    chosen: Dict[str, int] = {}
    p = suite.protocol
    for name in names:
        method = suite.methods[name]
        if not method.tuned:
            continue
        if len(method.grid) == 1:
            chosen[name] = 0
            continue
        scores = []
        for point, overrides in enumerate(method.grid):
            values = []
            for inner in range(p.inner_folds):
                row = f"{name}@{point}"
                cell = _ensure(suite, clock, f"tune {row} [{', '.join(overrides) or 'as shipped'}] inner fold "
                               f"{inner + 1}/{p.inner_folds}", "tune", row, method, overrides, 0, 0, inner, wait=True)
                values.append(cell["test"]["balanced_accuracy"])
            scores.append(float(np.mean(values)))
        chosen[name] = int(np.argmax(scores))  # ties keep the earlier point, the config as shipped first
        # One file per method: suites split over several processes (--methods) never overwrite each other.
        atomic_write_text(suite.out / "tuning" / f"{name}.json",
                          json.dumps({"inner_balanced_accuracy": scores, "chosen": chosen[name]}, indent=1))
        logger.info("tune %s: inner-fold balanced accuracy %s -> point %d", name,
                    ", ".join(f"{s:.3f}" for s in scores), chosen[name])
    return chosen


def chosen_points(suite: Suite) -> Dict[str, int]:
    """The grid point each tuned method's tuning chose, from the folder's ``tuning/`` records."""
    return {p.stem: read_json(p)["chosen"] for p in sorted((suite.out / "tuning").glob("*.json"))}


def planned_cells(suite: Suite, methods: Sequence[str], ablations: Sequence[str]) -> List[Path]:
    """Every cell record a finished suite of these methods and levers has."""
    p = suite.protocol
    order = with_prerequisites(suite, [*methods, *(suite.ablations[a].method for a in ablations)])
    paths = [suite.cell_path("tune", f"{name}@{point}", 0, 0, inner) for name in order
             if suite.methods[name].tuned and len(suite.methods[name].grid) > 1
             for point in range(len(suite.methods[name].grid)) for inner in range(p.inner_folds)]
    paths += [suite.cell_path("main", name, r, f) for r in range(p.repeats) for f in range(p.folds)
              for name in with_prerequisites(suite, methods) if suite.methods[name].knn_of is None]
    paths += [suite.cell_path("ablation", name, 0, f) for name in ablations for f in range(p.folds)]
    return paths


def _set_aside(suite: Suite, path: Path, why: str) -> None:
    """Moves a record out of the phase folder (kept under ``cells/replaced/``), so its cell is trained again."""
    aside = suite.out / "cells" / "replaced" / f"{path.stem}.{time.strftime('%Y%m%d-%H%M%S')}.json"
    aside.parent.mkdir(parents=True, exist_ok=True)
    path.rename(aside)
    logger.warning("%s: %s; its record is kept as %s and the cell is trained again", path.name, why, aside)


def open_suite(suite: Suite) -> None:
    """Reads the dataset, checks the folds fit it, and checks (or writes) the folder's settings.

    Raises:
        ValueError: Folds the smallest class cannot fill, or a folder holding another suite's cells.
        FileNotFoundError: No dataset at the suite's root.
    """
    dataset = MVTecAD(suite.root, category=suite.category, image_size=suite.protocol.image_size)
    suite.class_names = dataset.class_names
    p = suite.protocol
    # Fold counts too large for the smallest class fail here, not mid-suite; tuning splits repeat 0, fold 0.
    first = stratified_kfold(dataset, n_splits=p.folds, seed=p.split_seed)[0]
    stratified_kfold(np.asarray(dataset.targets)[first.train_idx], n_splits=p.inner_folds, seed=p.split_seed)
    counts = np.bincount(np.asarray(dataset.targets), minlength=len(dataset.class_names))
    check_or_write_settings(suite, {name: int(n) for name, n in zip(dataset.class_names, counts)})


def run_suite(suite: Suite, methods: Sequence[str], ablations: Sequence[str] = (),
              stop_after_minutes: Optional[float] = None) -> Progress:
    """Runs every missing cell of ``methods`` (and what they depend on) and of the ``ablations`` levers.

    Returns:
        How many cells were left to other workers (claimed by a live process when this one got there), and
        how many are left for a later sitting because the budget ``stop_after_minutes`` ran out.
    """
    check_definitions(suite.methods, suite.ablations)
    for name in ablations:
        if name not in suite.ablations:
            raise ValueError(f"unknown ablation {name!r} for protocol {suite.protocol.name!r}; its ablations: "
                             f"{', '.join(suite.ablations)}")
    open_suite(suite)
    p = suite.protocol
    clock = _Clock(suite, stop_after_minutes)
    progress = Progress()
    try:
        chosen = _tune(suite, clock, with_prerequisites(suite, [*methods, *(suite.ablations[a].method
                                                                              for a in ablations)]))
        progress.elsewhere += _main_phase(suite, clock, methods, chosen)
        for name in ablations:
            lever = suite.ablations[name]
            for fold in range(p.folds):
                done = _ensure(suite, clock, f"ablation {name} fold {fold}", "ablation", name,
                               suite.methods[lever.method], (*suite.methods[lever.method].grid[chosen[lever.method]],
                                                             *lever.overrides), 0, fold)
                progress.elsewhere += done is None
    except _OutOfTime:
        progress.left_for_time = sum(not path.exists() for path in planned_cells(suite, methods, ablations))
        logger.info("the time budget (%s min) is spent: %d cells left for the next sitting",
                    stop_after_minutes, progress.left_for_time)
    return progress


def _main_phase(suite: Suite, clock: _Clock, methods: Sequence[str], chosen: Dict[str, int]) -> int:
    """Phase 2; returns how many cells were left to other workers."""
    p = suite.protocol
    names = [n for n in with_prerequisites(suite, methods) if suite.methods[n].knn_of is None]
    probes = {suite.methods[n].needs: n for n in names if suite.methods[n].needs}
    cells = [(r, f, n) for r in range(p.repeats) for f in range(p.folds) for n in names]
    elsewhere = 0
    for index, (repeat, fold, name) in enumerate(cells, start=1):
        method = suite.methods[name]
        label = f"[{index}/{len(cells)}] {name} repeat {repeat} fold {fold}"
        if method.needs:
            stage1 = suite.run_dir("main", method.needs, repeat, fold)
            stage1_record = suite.cell_path("main", method.needs, repeat, fold)
            if read_cell(stage1_record) is None:
                # its stage-1 cell is another worker's (whose last.pt is mid-training): that worker probes it next
                logger.info("%s: its %s cell is another worker's, skipped", label, method.needs)
                elsewhere += 1
                continue
            if (read_cell(suite.cell_path("main", name, repeat, fold)) is None
                    and not final_checkpoint(stage1, p).exists()):
                # a fresh clone holds the records, not the run folders: the encoder to probe must be trained again
                _set_aside(suite, stage1_record, f"{name} needs its encoder and the run folder is not here")
                _ensure(suite, clock, label.replace(name, method.needs), "main", method.needs,
                        suite.methods[method.needs], suite.methods[method.needs].grid[chosen[method.needs]],
                        repeat, fold, wait=True, also_s=clock.expected_s("main", name, name))
            done = _ensure(suite, clock, label, "main", name, method, (), repeat, fold, stage1_dir=stage1)
        else:
            follows = probes.get(name)  # the probe that reads this cell's encoder is started right after it
            also = clock.expected_s("main", follows, follows) if follows else 0.0
            done = _ensure(suite, clock, label, "main", name, method, method.grid[chosen[name]], repeat, fold,
                           also_s=also)
        elsewhere += done is None
    return elsewhere
