"""One cell of the suite: where its files are, the config it trains with, training it, reading it back.

A cell is one method (or grid point, or lever) on one fold of one repeat. Its record is a small JSON file
under ``<out>/cells/<phase>/`` written once the run finishes; its run folder under ``<out>/runs/`` holds
the checkpoints. The records are what a suite needs to resume on a fresh clone (commit them); a run
folder is only needed while a probe still has to read its stage-1 encoder.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import bcl
from bcl.checkpoints import atomic_write_text
from bcl.config import LinearConfig, SupConConfig, load_config

from .definitions import CONFIGS, EPOCHS_SCALE, Lever, Method, Protocol

__all__ = ["Suite", "cell_config", "check_or_write_settings", "final_checkpoint", "read_cell", "read_cells",
           "read_json", "run_cell"]


@dataclass
class Suite:
    """A results folder (``out``) of one protocol on one dataset."""

    out: Path
    root: str
    category: Optional[str]
    protocol: Protocol
    class_names: List[str] = field(default_factory=list)

    @property
    def methods(self) -> Dict[str, Method]:
        return self.protocol.methods

    @property
    def ablations(self) -> Dict[str, Lever]:
        return self.protocol.ablations

    def cell_path(self, phase: str, name: str, repeat: int, fold: int, inner: Optional[int] = None) -> Path:
        tail = f"__i{inner}" if inner is not None else ""
        return self.out / "cells" / phase / f"{name}__r{repeat}__f{fold}{tail}.json"

    def run_dir(self, phase: str, name: str, repeat: int, fold: int, inner: Optional[int] = None) -> Path:
        tail = f"-i{inner}" if inner is not None else ""
        return self.out / "runs" / phase / name / f"r{repeat}-f{fold}{tail}"


def settings(suite: Suite, images_per_class: Dict[str, int]) -> Dict[str, Any]:
    """What must be equal for two sittings to add cells to the same folder.

    The data is named by its category and images per class, not by its path: a fresh clone on another
    machine finds the same images elsewhere and continues the suite.
    """
    return {
        "protocol": suite.protocol.as_dict(), "category": suite.category, "images_per_class": images_per_class,
        "grid": {m.name: [list(p) for p in m.grid] for m in suite.methods.values()},
        "ablations": {a.name: {"method": a.method, "overrides": list(a.overrides)} for a in suite.ablations.values()},
    }


def check_or_write_settings(suite: Suite, images_per_class: Dict[str, int]) -> None:
    """Refuses to mix cells of different data, protocols, grids or levers in one results folder."""
    path = suite.out / "suite.json"
    current = settings(suite, images_per_class)
    if path.exists():
        differing = _differences(read_json(path).get("settings", {}), current)
        if differing:
            raise ValueError(
                f"{suite.out} holds results of a different suite configuration ({'; '.join(differing)}); "
                "use another --out folder or the same settings"
            )
        return
    suite.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"settings": current, "bcl_version": bcl.__version__}, indent=2))


def _differences(saved: Dict[str, Any], current: Dict[str, Any], prefix: str = "") -> List[str]:
    found = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append(f"{prefix}{key}: {a!r} there, {b!r} now")
    return found


def final_checkpoint(run_dir: Path, protocol: Protocol) -> Path:
    """The checkpoint a cell is evaluated with, and a probe reads."""
    return run_dir / "checkpoints" / ("best.pt" if protocol.selection == "val" else "last.pt")


def cell_config(suite: Suite, method: Method, extra: Sequence[str], repeat: int, fold: int,
                inner: Optional[int], run_dir: Path, stage1_dir: Optional[Path]):
    """The validated config of one cell: the method's shipped config, the protocol's settings, then ``extra``."""
    p = suite.protocol
    epochs = p.epochs if method.trains_encoder else p.probe_epochs
    for override in extra:
        key, _, value = override.partition("=")
        if key == EPOCHS_SCALE:
            epochs = max(1, int(round(epochs * float(value))))
    extra = [o for o in extra if not o.startswith(EPOCHS_SCALE + "=")]
    overrides = [
        f"data.root={suite.root}", f"data.image_size={p.image_size}", f"data.n_folds={p.folds}", f"data.fold={fold}",
        f"data.split_seed={p.split_seed + repeat}", f"run.seed={repeat}", f"optim.batch_size={p.batch_size}",
        f"optim.epochs={epochs}", f"eval.selection={p.selection}", "eval.projector_per_class=10",
        f"data.normalization={p.normalization}", "run.progress=false", f"run.output_dir={run_dir.parent}",
        f"run.name={run_dir.name}",
        "run.overwrite=true",  # a folder without a finished cell is an interrupted try: moved aside, kept
        f"data.category={suite.category}" if suite.category else "data.category=null",
    ]
    if p.amp is not None:
        overrides.append(f"train.amp={p.amp}")
    if inner is not None:
        overrides += [f"data.inner_folds={p.inner_folds}", f"data.inner_fold={inner}"]
    if stage1_dir is not None:
        overrides.append(f"model.stage1_checkpoint={final_checkpoint(stage1_dir, p)}")
    else:
        overrides += [f"model.encoder={p.encoder}", f"model.weights={p.weights}"]
    schema = SupConConfig if method.stage == "supcon" else LinearConfig
    return load_config(schema, CONFIGS / method.config, [*overrides, *extra])


def run_cell(suite: Suite, phase: str, row: str, method: Method, extra: Sequence[str], repeat: int, fold: int,
             inner: Optional[int] = None, stage1_dir: Optional[Path] = None) -> Dict[str, Any]:
    """Trains one cell and writes its record; returns the record."""
    from bcl.stages import run_linear, run_supcon  # imported late: the CLI's --help stays fast

    run_dir = suite.run_dir(phase, row, repeat, fold, inner)
    cfg = cell_config(suite, method, extra, repeat, fold, inner, run_dir, stage1_dir)
    started = time.perf_counter()
    result = (run_supcon if method.stage == "supcon" else run_linear)(cfg, config_stem=method.name)
    cell = {"phase": phase, "row": row, "method": method.name, "repeat": repeat, "fold": fold, "inner": inner,
            "overrides": list(extra), "protocol": suite.protocol.as_dict(), "run_dir": str(result.run_dir),
            "wall_time_s": round(time.perf_counter() - started, 2), "test": result.metrics["test"]}
    atomic_write_text(suite.cell_path(phase, row, repeat, fold, inner), json.dumps(cell, indent=1))
    return cell


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is damaged ({type(error).__name__}: {error}); delete it to rerun that cell") from None


def read_cell(path: Path) -> Optional[Dict[str, Any]]:
    return read_json(path) if path.exists() else None


def read_cells(suite: Suite, phase: str) -> List[Dict[str, Any]]:
    """The finished cells of ``phase``; a cell this suite could not have written is an error naming it."""
    cells = []
    p = suite.protocol
    trained = {name for name, m in suite.methods.items() if m.knn_of is None}
    for path in sorted((suite.out / "cells" / phase).glob("*.json")):
        cell = read_json(path)
        try:
            where = suite.cell_path(phase, cell["row"], cell["repeat"], cell["fold"], cell.get("inner"))
            fits = (cell["phase"] == phase and where == path and 0 <= cell["fold"] < p.folds
                    and 0 <= cell["repeat"] < (1 if phase != "main" else p.repeats)
                    and (cell.get("inner") is None) == (phase != "tune") and isinstance(cell["test"], dict)
                    # cells from before the "protocol" field are checked by the folder's suite.json alone
                    and cell.get("protocol", p.as_dict()) == p.as_dict()
                    and (cell["row"] in trained if phase == "main" else
                         cell["row"] in suite.ablations if phase == "ablation" else
                         cell["row"].split("@")[0] in trained))
        except (KeyError, TypeError):
            fits = False
        if not fits:
            raise ValueError(f"{path} is not a {phase} cell of this suite ({p.repeats} repeats x {p.folds} folds): "
                             "copied from another suite or edited? Move it out of the folder")
        cells.append(cell)
    return cells
