"""Is the embedded data learnable? A plain ResNet-18 + cross-entropy on *balanced* synthetic classes.

The generator's difficulty is set so that this run learns it well (docs/data.md), not so that one
method wins: train on ``--per-class`` images of every class (seed 0), test once at the last epoch on a
separately generated balanced set (seed 1, 50 per class). Adam, batch 32, crops of 70-100 % + flips,
bf16 autocast; ``--schedule onecycle`` (default) or ``constant``.

    python benchmarks/synthetic_learnability.py --size 64 --epochs 30 --per-class 60
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2

from bcl.data import SyntheticTransistor
from bcl.models import build_encoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--per-class", type=int, default=60)
    parser.add_argument("--schedule", choices=("onecycle", "constant"), default="onecycle")
    args = parser.parse_args()
    torch.manual_seed(0)
    train = SyntheticTransistor(counts=[args.per_class] * 5, image_size=args.size, seed=0)
    test = SyntheticTransistor(counts=[50] * 5, image_size=args.size, seed=1)
    x, y = torch.stack(train.images), torch.tensor(train.targets)
    x_test, y_test = torch.stack(test.images), torch.tensor(test.targets)
    augment = v2.Compose([v2.RandomResizedCrop(args.size, scale=(0.7, 1.0), antialias=True), v2.RandomHorizontalFlip()])
    model = nn.Sequential(build_encoder("resnet18"), nn.Linear(512, 5)).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    steps = args.epochs * ((len(x) + 31) // 32)
    scheduler = (torch.optim.lr_scheduler.OneCycleLR(optimizer, 1e-3, total_steps=steps, pct_start=0.1)
                 if args.schedule == "onecycle" else None)
    mean, std = (torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1),
                 torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def prepare(images: torch.Tensor) -> torch.Tensor:
        return ((images.float() / 255 - mean) / std).contiguous(memory_format=torch.channels_last)

    started = time.perf_counter()
    for _ in range(args.epochs):
        model.train()
        order = torch.randperm(len(x))
        for i in range(0, len(x), 32):
            batch = order[i:i + 32]
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = model(prepare(torch.stack([augment(x[j]) for j in batch])))
            loss = F.cross_entropy(logits.float(), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        predictions = model(prepare(x_test)).argmax(1)
    recall = [float((predictions[y_test == c] == c).float().mean()) for c in range(5)]
    print(f"{args.per_class} per class, {args.size} px, {args.epochs} epochs ({args.schedule}), "
          f"{time.perf_counter() - started:.0f} s: balanced accuracy {np.mean(recall):.3f}; per-class recall "
          + ", ".join(f"{name} {r:.2f}" for name, r in zip(train.class_names, recall)))


if __name__ == "__main__":
    main()
