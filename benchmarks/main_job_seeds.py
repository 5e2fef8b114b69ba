"""The main job (`make run`) over several seeds: mean and spread of each row of its table.

Each seed runs the three runs of the main job (BCL stage 1, the linear probe on it, the CE baseline)
with ``run.seed`` set (initialisation, augmentation, loader order and the pasted defects); the data
(training seed 0, test seed 2, as in the configs) stays the same. Finished runs are kept, so an interrupted sitting
continues where it stopped. Run it on an idle machine: about 6.5 minutes a seed on a 2-core AMD EPYC.

    python benchmarks/main_job_seeds.py --out /tmp/bcl-main-seeds --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROWS = ("BCL -> linear probe", "BCL, own classifier", "CE baseline")


def _run(script: str, config: str, out: Path, name: str, *overrides: str) -> Path:
    run_dir = out / name
    if (run_dir / "metrics.json").is_file():
        return run_dir
    if run_dir.exists():  # an interrupted run: continue it rather than start over
        command = [sys.executable, str(ROOT / script), "--resume", str(run_dir)]
    else:
        command = [sys.executable, str(ROOT / script), "--config", str(ROOT / "configs" / config),
                   f"run.output_dir={out}", f"run.name={name}", *overrides]
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return run_dir


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the run folders (outside the work tree)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from bcl.compare import comparison_rows
    from bcl.metrics import format_results_table
    from bcl.runs import load_test_metrics

    per_seed = {}
    for seed in args.seeds:
        started = time.perf_counter()
        seed_opt = f"run.seed={seed}"
        bcl = _run("train_supcon.py", "main_supcon.yaml", args.out, f"seed{seed}-bcl", seed_opt)
        probe = _run("train_linear.py", "main_linear.yaml", args.out, f"seed{seed}-probe", seed_opt,
                     f"model.stage1_checkpoint={bcl / 'checkpoints' / 'last.pt'}")
        ce = _run("train_linear.py", "main_ce.yaml", args.out, f"seed{seed}-ce", seed_opt)
        runs = dict(zip(ROWS, (load_test_metrics(probe), load_test_metrics(bcl), load_test_metrics(ce))))
        per_seed[seed] = comparison_rows(runs)
        print(f"seed {seed}: done in {time.perf_counter() - started:.0f} s (0 s = already finished)", flush=True)
    columns = list(next(iter(per_seed.values()))[ROWS[0]])
    lines = ["| row | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for row in ROWS:
        cells = []
        for column in columns:
            values = [100 * per_seed[s][row][column] for s in args.seeds]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.1f} ± {spread:.1f}")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    print(f"\nMain job over seeds {args.seeds} (mean ± sample sd, %):\n")
    print("\n".join(lines))
    for seed in args.seeds:
        print(f"\nseed {seed}:\n" + format_results_table(per_seed[seed], columns))
    return 0


if __name__ == "__main__":
    sys.exit(main())
