"""Forward+backward time and peak extra memory of the contrastive losses, printed as a table.

Compares, at batch B × V views, feature dim D and C classes (prototypes appended):

* ``BalancedSupCon``  — bcl, class averaging + prototypes;
* ``SupConLoss``      — bcl, plain SupCon (no prototypes, so C does not enter);
* ``BalSCL vectorized`` — the official BCL maths with its per-column class counts gathered by
  indexing (the "plain vectorized version" the cost of ours is held to);
* ``BalSCL official``  — the same maths with the official code's per-column Python list
  comprehension (``torch.tensor([batch_cls_count[i] for i in targets])``), which grows with C.

Peak memory is the largest total of live tensors during one forward+backward step beyond what
was allocated before it: from the profiler's memory timeline on CPU, ``max_memory_allocated`` on CUDA.
Run:  python benchmarks/bench_loss.py  [--classes 5 100 1000 8142] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import warnings
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bcl.losses import BalancedSupCon, SupConLoss

METHODS = ("BalancedSupCon", "SupConLoss", "BalSCL vectorized", "BalSCL official")


def balscl_replica(prototypes, features, labels, temperature, per_column_loop):
    """The official BalSCL forward pass (two views), optionally with its per-column Python loop."""
    batch = features.shape[0]
    num_classes = prototypes.shape[0]
    device = features.device
    contrast = torch.cat([torch.cat(torch.unbind(features, dim=1), dim=0), prototypes], dim=0)
    targets = torch.cat([labels.repeat(2), torch.arange(num_classes, device=device)])
    class_count = torch.eye(num_classes, device=device)[targets].sum(dim=0)
    mask = torch.eq(targets[: 2 * batch, None], targets[None, :]).float()
    logits_mask = torch.scatter(
        torch.ones_like(mask), 1, torch.arange(2 * batch, device=device).view(-1, 1), 0
    )
    mask = mask * logits_mask
    logits = contrast[: 2 * batch] @ contrast.T / temperature
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    exp_logits = torch.exp(logits) * logits_mask
    if per_column_loop:
        column_count = torch.tensor([class_count[i] for i in targets], device=device)
    else:
        column_count = class_count[targets]
    per_instance_weight = column_count.view(1, -1).expand(2 * batch, -1) - mask
    log_prob = logits - torch.log((exp_logits / per_instance_weight).sum(dim=1, keepdim=True))
    mean_log_prob_pos = (mask * log_prob).sum(1) / mask.sum(1)
    return (-mean_log_prob_pos).view(2, batch).mean()


def make_step(method, batch, views, dim, num_classes, device, seed=0):
    generator = torch.Generator().manual_seed(seed)
    raw = torch.randn(batch, views, dim, generator=generator).to(device)
    labels = torch.randint(0, num_classes, (batch,), generator=generator).to(device)
    raw_prototypes = torch.randn(num_classes, dim, generator=generator).to(device)
    balanced, supcon = BalancedSupCon(temperature=0.1), SupConLoss(temperature=0.1)

    def step():
        features = raw.clone().requires_grad_(True)
        prototypes = raw_prototypes.clone().requires_grad_(True)
        if method == "BalancedSupCon":
            loss = balanced(features, labels, prototypes)
        elif method == "SupConLoss":
            loss = supcon(features, labels)
        else:
            loss = balscl_replica(
                F.normalize(prototypes, dim=1), F.normalize(features, dim=2), labels, 0.1,
                per_column_loop=method == "BalSCL official",
            )
        loss.backward()
        return loss.item()

    return step


def peak_step_memory(step, device):
    """Bytes of tensors allocated at the peak of one ``step()`` beyond those alive before it."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        return torch.cuda.max_memory_allocated() - base
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities, profile_memory=True, record_shapes=True,
                                with_stack=True) as prof:
        step()
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated for CUDA in favour of snapshots; fine on CPU
        timeline = Path(folder) / "timeline.json"
        prof.export_memory_timeline(str(timeline), device="cpu")
        _, sizes = json.loads(timeline.read_text())
    return max(sum(categories) for categories in sizes)


def measure(method, batch, views, dim, num_classes, device, reps):
    """Median forward+backward time over ``reps`` steps after a warm-up, and the step's peak memory."""
    step = make_step(method, batch, views, dim, num_classes, device)
    step()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return {"ms": 1000 * statistics.median(times), "peak_mib": peak_step_memory(step, device) / 2**20}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--classes", type=int, nargs="+", default=[5, 100, 1000, 8142])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    if args.views != 2:
        parser.error("--views must be 2: the official BalSCL replica is written for two views")

    sys.stdout.write(
        f"# contrastive loss forward+backward, B={args.batch} x V={args.views}, D={args.dim}, device={args.device}\n"
        f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads; median of {args.reps} steps\n"
        "# peak = live tensors at the peak of one step; matrix = the size of one fp32 [V·B, V·B + C]\n\n"
        "| C | matrix | " + " | ".join(f"{m} ms / peak MiB" for m in METHODS)
        + " | ours ÷ vectorized | official ÷ ours |\n"
        "|---|---|" + "---|" * len(METHODS) + "---|---|\n"
    )
    for num_classes in args.classes:
        anchors = args.views * args.batch
        matrix_mib = anchors * (anchors + num_classes) * 4 / 2**20
        cells = {
            method: measure(method, args.batch, args.views, args.dim, num_classes, args.device, args.reps)
            for method in METHODS
        }
        row = " | ".join(f"{cells[m]['ms']:.1f} / {cells[m]['peak_mib']:.1f}" for m in METHODS)
        ours = cells["BalancedSupCon"]["ms"]
        versus = f"{ours / cells['BalSCL vectorized']['ms']:.2f} | {cells['BalSCL official']['ms'] / ours:.1f}x"
        sys.stdout.write(f"| {num_classes} | {matrix_mib:.1f} MiB | {row} | {versus} |\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
