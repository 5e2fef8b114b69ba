"""Command line shared by ``train_supcon.py`` and ``train_linear.py``."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence, Type

from bcl.config import RESUME_OVERRIDES, check_resume_overrides, config_to_yaml, load_config
from bcl.distributed import cleanup, is_main_process
from bcl.metrics import DEFAULT_TABLE_COLUMNS, GOOD_CLASS, LONG_TAIL_TABLE_COLUMNS, format_results_table
from bcl.runs import load_test_metrics
from bcl.stages import RunInterrupted
from bcl.tensorboard import tensorboard_hint

__all__ = ["main"]


def _parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=description,
        epilog="Overrides are section.key=value, e.g. optim.epochs=10 data.image_size=64 run.name=try1.",
    )
    parser.add_argument("--config", type=Path, help="YAML config file (keys of the schema only)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--resume", metavar="RUN_DIR",
                        help="continue the run in RUN_DIR from its last checkpoint (overrides of "
                             f"{', '.join(RESUME_OVERRIDES)} only)")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    return parser


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (a scheduler's or ``kill``'s stop) ends the run like Ctrl-C: cleanly, with a resume hint.

    Python's default for SIGTERM is to die at once, leaving a half-written checkpoint's temporary file.
    """
    def handler(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. called from a thread in a notebook): leave it alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _error_line(error: BaseException) -> str:
    """One line for the user: the library's own message; the exception type only when it is not ours."""
    message = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, OSError) and error.strerror:  # "[Errno 28] ..." says nothing a user needs
        message = error.strerror
        if error.filename and str(error.filename) not in message:
            message = f"{message}: {error.filename}"
    ours = type(error).__module__.startswith("bcl.") or isinstance(error, (OSError, ValueError))
    if ours:
        return f"error: {message}"
    return f"error: {type(error).__name__}: {message} (unexpected; rerun with --debug for the traceback and report it)"


def main(schema: Type, run_stage: Callable, description: str, argv: Optional[Sequence[str]] = None) -> int:
    """Parses arguments, runs one stage, prints its results table and where its logs are.

    Every error ends as one ``error:`` line on stderr and exit status 2 (``--debug`` re-raises it with
    its traceback); Ctrl-C and SIGTERM end the run cleanly with a line saying how to resume it (exit
    status 130 or 143).
    """
    args = _parser(description).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    if args.resume and args.config:
        sys.stderr.write("error: --resume continues a run with its saved config; drop --config\n")
        return 2
    try:
        with _sigterm_as_interrupt():
            if args.resume:
                check_resume_overrides(args.overrides)  # before anything is opened, so a typo costs nothing
            cfg = load_config(schema, args.config, () if args.resume else args.overrides)
            if args.print_config:
                sys.stdout.write(config_to_yaml(cfg))
                return 0
            stem = args.config.stem if args.config else schema.__name__.lower()
            result = run_stage(cfg, config_stem=stem, resume=args.resume,
                               resume_overrides=args.overrides if args.resume else ())
            main_process = is_main_process()  # asked before cleanup() forgets the process group
    except KeyboardInterrupt as interrupt:
        name = "SIGTERM" if interrupt.args[:1] == ("SIGTERM",) else "SIGINT (Ctrl-C)"
        if isinstance(interrupt, RunInterrupted):
            sys.stderr.write(
                f"\ninterrupted by {name}: {interrupt.run_dir} keeps epoch {interrupt.saved_epoch} of "
                f"{interrupt.epochs}; continue with: python {interrupt.script} --resume {interrupt.run_dir}\n")
        else:
            sys.stderr.write(f"\ninterrupted by {name} before training started; no run was written\n")
        return 143 if name == "SIGTERM" else 130
    except Exception as error:
        if args.debug:
            raise
        sys.stderr.write(_error_line(error) + "\n")
        return 2
    finally:
        cleanup()
    if not main_process:
        return 0
    if result.metrics is None:
        sys.stdout.write(f"Stopped after epoch {result.completed_epochs}; continue with --resume {result.run_dir}\n")
        return 0
    label = result.metrics.get("label") or result.metrics["stage"]
    rows = {f"{label} {split}": result.metrics[split] for split in ("val", "test")
            if result.metrics.get(split) is not None}
    if "stage1_run" in result.metrics:
        # Put the stage-1 model's own numbers on the same test part next to the probe's.
        try:
            rows = {"stage 1 test (own classifier)": load_test_metrics(result.metrics["stage1_run"])["test"], **rows}
        except FileNotFoundError:
            pass  # the stage-1 run folder was moved or is another machine's: the probe's rows alone
        except ValueError as error:
            sys.stderr.write(f"warning: {error}; the table shows this run's rows alone\n")
    columns = DEFAULT_TABLE_COLUMNS if result.metrics["class_names"][0] == GOOD_CLASS else LONG_TAIL_TABLE_COLUMNS
    sys.stdout.write("\n" + format_results_table(rows, columns) + "\n")
    sys.stdout.write(f"\nRun folder: {result.run_dir}\n{tensorboard_hint(result.run_dir.parent)}\n")
    return 0
