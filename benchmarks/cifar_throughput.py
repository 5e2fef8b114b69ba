"""How fast a CIFAR-LT epoch can run on this CPU: ResNet-32 train steps and the augmentation that feeds them.

Prints two tables:

* model: images/second of a ResNet-32 forward + backward + SGD step on ``--batch`` random 32 px images,
  in fp32, bf16 autocast, and bf16 autocast + channels_last, for one view ``[B, 3, H, W]`` (the CE and
  logit-adjusted baselines) and three views ``[B, 3, 3, H, W]`` through ``BCLModel`` with the BCL loss
  (the BCL recipe: a classifier view and two contrastive views);
* augmentation: images/second of each CIFAR view (``classifier_view(augment="cifar")``,
  ``contrastive_view``) on uint8 32 px images, one process, so it can be set against the model rate.

Run:  OMP_NUM_THREADS=1 python benchmarks/cifar_throughput.py [--threads 1] [--batch 128] [--steps 10]
Set the thread count to what a training run uses: results on a busy machine are not comparable.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

from bcl.data.transforms import classifier_view, contrastive_view
from bcl.losses import BalancedSupCon
from bcl.models import build_model

MODES = (("fp32", False, False), ("bf16", True, False), ("bf16 + channels_last", True, True))


def model_images_per_second(views: int, batch: int, steps: int, bf16: bool, channels_last: bool) -> float:
    torch.manual_seed(0)
    model = build_model("resnet32", 10, proj_dim=128, prototypes="learned")
    criterion = BalancedSupCon(temperature=0.1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    shape = (batch, 3, 32, 32) if views == 1 else (batch, views, 3, 32, 32)
    images = torch.randn(*shape)
    if channels_last and views == 1:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (batch,))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(images)
        logits = out["logits"].float()
        if views == 1:
            loss = F.cross_entropy(logits, labels)
        else:
            loss = F.cross_entropy(logits[:, 0], labels) + criterion(
                out["projections"][:, 1:].float(), labels, out["prototypes"].float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # first call allocates and picks kernels
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * views * steps / (time.perf_counter() - start)


def augment_images_per_second(transform, count: int) -> float:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=generator)
    transform(images[0])
    start = time.perf_counter()
    for image in images:
        transform(image)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    parser.add_argument("--images", type=int, default=2000, help="images per augmentation measurement")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = sys.stdout
    out.write(f"# ResNet-32 on 32 px, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
              f"{os.cpu_count()} CPUs, batch {args.batch}, {args.steps} steps\n\n")
    out.write("| precision | 1 view (CE / LA) img/s | 3 views + BCL loss img/s |\n|---|---|---|\n")
    for name, bf16, channels_last in MODES:
        rates = [model_images_per_second(views, args.batch, args.steps, bf16, channels_last) for views in (1, 3)]
        out.write(f"| {name} | {rates[0]:.0f} | {rates[1]:.0f} |\n")
        out.flush()
    out.write("\n| augmentation (one process) | img/s |\n|---|---|\n")
    for name, transform in (("classifier view: pad crop, flip, AutoAugment, Cutout",
                             classifier_view(32, augment="cifar")),
                            ("contrastive view: crop, flip, colour jitter, grayscale", contrastive_view(32))):
        out.write(f"| {name} | {augment_images_per_second(transform, args.images):.0f} |\n")
        out.flush()


if __name__ == "__main__":
    main()
