r"""The comparison suite for small data: tuning on inner folds, repeated stratified k-fold, paired CIs.

    python benchmarks/mvtec_suite.py --root $BCL_MVTEC_ROOT --protocol quick --out results/quick \
        --report docs/results.md
    python benchmarks/mvtec_suite.py --root $BCL_MVTEC_ROOT --protocol pretrained --out results/pretrained \
        --stop-after-minutes 120 --report docs/results_pretrained.md --figures docs/images/pretrained \
        --reading docs/results_pretrained_reading.md --headline-into docs/results.md

Three phases (tune on inner folds, main cells, ablations), every one resumable: a finished cell is a
JSON record under ``<out>/cells/``, and a rerun skips it. ``--stop-after-minutes`` ends a sitting at a
cell boundary; commit the records and rerun the same command (on a fresh clone too) to continue.
Several workers may share one folder (the same command started twice, one thread each on a small
machine). How cells are defined, run, resumed and aggregated: :mod:`benchmarks.mvtec`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

if __package__ in (None, ""):  # run as a script: the repository root makes `benchmarks.mvtec` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402  (after the path setup above)

import bcl  # noqa: E402
from bcl.provenance import cpu_name  # noqa: E402
from benchmarks.mvtec.cells import Suite, read_cells  # noqa: E402
from benchmarks.mvtec.definitions import DESIGNS, PROTOCOLS, Protocol  # noqa: E402
from benchmarks.mvtec.report import (ablation_table, results_table, write_embedding_map, write_figures,  # noqa: E402
                                     write_headline_into, write_report, write_results)
from benchmarks.mvtec.schedule import chosen_points, open_suite, planned_cells, run_suite, with_prerequisites  # noqa: E402
from benchmarks.mvtec.statistics import aggregate, with_knn_rows  # noqa: E402

__all__ = ["main", "reproduce_command", "resolve_protocol"]

_ALL_METHODS = list(dict.fromkeys(name for design in DESIGNS.values() for name in design.methods))
_ALL_ABLATIONS = list(dict.fromkeys(name for design in DESIGNS.values() for name in design.ablations))


def reproduce_command(argv: Sequence[str]) -> str:
    """The command that reruns the suite and rewrites the report (``--aggregate-only`` left out)."""
    env_root = os.environ.get("BCL_MVTEC_ROOT")
    kept = ["$BCL_MVTEC_ROOT" if env_root and token == env_root else token
            for token in argv if token != "--aggregate-only"]
    prefix = [] if "--root" in kept else ["BCL_MVTEC_ROOT=/path/to/mvtec_ad/transistor"]
    return " ".join([*prefix, "python benchmarks/mvtec_suite.py", *kept])


def machine_description() -> str:
    return (f"{platform.system()} {platform.machine()} ({cpu_name()}), {os.cpu_count()} CPU cores, "
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
    parser.add_argument("--methods", nargs="+", default=None, choices=_ALL_METHODS, metavar="METHOD",
                        help="methods to run (default: the protocol's); " + "; ".join(
                            f"{name}: {', '.join(d.methods)}" for name, d in DESIGNS.items()))
    parser.add_argument("--ablations", nargs="*", default=None, choices=_ALL_ABLATIONS, metavar="LEVER",
                        help="levers to ablate (default: the protocol's; none with an empty list); " + "; ".join(
                            f"{name}: {', '.join(d.ablations)}" for name, d in DESIGNS.items()))
    parser.add_argument("--stop-after-minutes", type=float, default=None,
                        help="start no cell expected to end after this many minutes of this sitting")
    parser.add_argument("--aggregate-only", action="store_true", help="only rebuild results from finished cells")
    parser.add_argument("--figures", type=Path, default=None, help="folder for the PNG figures (default <out>)")
    parser.add_argument("--report", type=Path, default=None, help="also write this markdown report (docs/results.md)")
    parser.add_argument("--headline-into", type=Path, default=None, metavar="PAGE",
                        help="also put the report's headline table into PAGE between its two marker lines "
                             "(docs/results.md, beside another protocol's table); needs --report")
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
    if args.headline_into is not None and args.report is None:
        sys.stderr.write("error: --headline-into needs --report (the report its table links to)\n")
        return 2
    if args.stop_after_minutes is not None and not args.stop_after_minutes > 0:
        sys.stderr.write(f"error: --stop-after-minutes must be > 0, got {args.stop_after_minutes}\n")
        return 2
    try:
        protocol = resolve_protocol(args)
    except ValueError as error:
        sys.stderr.write(f"error: {error}\n")
        return 2
    design = DESIGNS[protocol.design]
    methods = args.methods if args.methods is not None else list(design.default_methods)
    ablations = args.ablations if args.ablations is not None else list(design.default_ablations)
    out = args.out or Path("results") / protocol.name
    figures_folder = args.figures or out
    suite = Suite(out, str(args.root), args.category, protocol)
    started = time.perf_counter()
    try:
        sys.stdout.write(f"Suite: {json.dumps(protocol.as_dict())}\nMethods: "
                         f"{', '.join(with_prerequisites(suite, methods))}; "
                         f"ablations: {', '.join(ablations) or 'none'}\nMachine: {machine_description()}\n")
        sys.stdout.flush()
        if not args.aggregate_only:
            progress = run_suite(suite, methods, ablations, args.stop_after_minutes)
            write_embedding_map(suite, figures_folder)  # while this machine has the encoders of its first cell
            if progress.left_for_time:
                sys.stdout.write(f"Stopped for the time budget: {progress.left_for_time} cells left. Commit "
                                 f"{out}/cells and {out}/tuning, then rerun the same command to continue\n")
                return 0
            if progress.elsewhere:
                sys.stdout.write(f"{progress.elsewhere} cells are other workers' of this suite; no report from this "
                                 "one: rerun with --aggregate-only once they finish\n")
                return 0
        else:
            open_suite(suite)
            write_embedding_map(suite, figures_folder)
        cells = {phase: read_cells(suite, phase) for phase in ("tune", "main", "ablation")}
        chosen = chosen_points(suite)
    except (ValueError, FileNotFoundError) as error:
        sys.stderr.write(f"error: {error}\n")
        return 2
    if not cells["main"]:
        sys.stderr.write(f"error: no finished main cells in {out}\n")
        return 2
    summary = aggregate(suite.methods, suite.ablations, cells["main"], cells["ablation"], folds=protocol.folds)
    summary["tuning"] = chosen
    write_results(out, summary, [c for phase in cells.values() for c in phase], suite.methods)
    class_names = next(list(c["test"]["per_class_recall"]) for c in cells["main"] if "per_class_recall" in c["test"])
    figures = write_figures(summary, with_knn_rows(suite.methods, cells["main"]), class_names, figures_folder,
                            suite.methods)
    tsne = figures_folder / "results_tsne.png"  # written by this sitting or kept from the one that had the encoders
    if args.report:
        reading = args.reading.read_text() if args.reading else ""
        planned = planned_cells(suite, methods, ablations)
        finished = (sum(path.exists() for path in planned), len(planned))
        command = reproduce_command(argv if argv is not None else sys.argv[1:])
        write_report(args.report, suite, summary, cells, chosen, figures + ([tsne] if tsne.exists() else []),
                     machine_description(), command, reading, finished=finished)
        if args.headline_into is not None:
            try:
                write_headline_into(args.headline_into, args.report, suite, summary, command, finished)
            except (ValueError, FileNotFoundError) as error:
                sys.stderr.write(f"error: {error}\n")
                return 2
    sys.stdout.write("\n" + results_table(summary, suite.methods) + "\n\n"
                     + ablation_table(summary, suite.methods, suite.ablations) + "\n")
    total = sum(c["wall_time_s"] for phase in cells.values() for c in phase)
    sys.stdout.write(f"\n{sum(map(len, cells.values()))} runs, {total / 60:.1f} min of training in all "
                     f"({(time.perf_counter() - started) / 60:.1f} min this sitting). Results in {out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
