"""How fast the data side feeds training, next to how fast the model trains, printed as a table.

For each working resolution it measures, on the real MVTec transistor images (``BCL_MVTEC_ROOT``) and
on the embedded synthetic dataset:

* building the dataset: decoding every PNG once (cold, empty cache) vs reading the on-disk cache;
* images/second a DataLoader delivers as 2-view contrastive batches (batch 64), 0 and 2 workers;
* images/second of a ResNet-18 forward+backward+SGD step on the same 2-view batches.

Run:  BCL_MVTEC_ROOT=/path/to/transistor python benchmarks/bench_pipeline.py [--sizes 64 128]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch
from torch.utils.data import DataLoader

from bcl.data import MVTecAD, SyntheticTransistor
from bcl.data.transforms import MultiViewTransform, contrastive_view, seed_worker
from bcl.losses import BalancedSupCon
from bcl.models import build_model


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def loader_images_per_second(dataset, num_workers, batch_size, epochs):
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=num_workers, drop_last=True,
        worker_init_fn=seed_worker, generator=torch.Generator().manual_seed(0), persistent_workers=num_workers > 0,
    )
    next(iter(loader))  # start the workers outside the timed part
    start, images = time.perf_counter(), 0
    for _ in range(epochs):
        for batch, _ in loader:
            images += batch.shape[0]
    return images / (time.perf_counter() - start)


def model_images_per_second(image_size, batch_size, steps):
    torch.manual_seed(0)
    model = build_model("resnet18", 5, proj_dim=128, prototypes="learned")
    criterion = BalancedSupCon(temperature=0.1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images = torch.randn(batch_size, 2, 3, image_size, image_size)
    labels = torch.randint(0, 5, (batch_size,))

    def step():
        out = model(images)
        loss = criterion(out["projections"], labels, out["prototypes"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch_size * steps / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2, help="DataLoader epochs per measurement")
    parser.add_argument("--steps", type=int, default=3, help="model steps per measurement")
    args = parser.parse_args()
    root = os.environ.get("BCL_MVTEC_ROOT")
    if not root:
        parser.error("set BCL_MVTEC_ROOT to the MVTec AD transistor folder (e.g. ../shared/data/mvtec_transistor_256)")

    out = sys.stdout
    out.write(f"# data pipeline vs model, torch {torch.__version__}, {torch.get_num_threads()} threads, "
              f"{os.cpu_count()} CPUs; batch {args.batch} x 2 views\n\n")
    out.write("| px | dataset | build cold s | build cached s | loader img/s (0 workers) | "
              "loader img/s (2 workers) | ResNet-18 train img/s |\n|---|---|---|---|---|---|---|\n")
    for size in args.sizes:
        views = MultiViewTransform([contrastive_view(size), contrastive_view(size)])
        model_rate = model_images_per_second(size, args.batch, args.steps)
        with tempfile.TemporaryDirectory() as cache_dir:
            real, cold = timed(MVTecAD, root, image_size=size, cache_dir=cache_dir)
            real, cached = timed(MVTecAD, root, image_size=size, cache_dir=cache_dir, transform=views)
        synthetic, generated = timed(SyntheticTransistor, image_size=size, seed=0, transform=views)
        for name, dataset, build_cold, build_cached in (
            (f"MVTec transistor ({len(real)})", real, f"{cold:.2f}", f"{cached:.2f}"),
            (f"synthetic ({len(synthetic)})", synthetic, f"{generated:.2f} (generated)", "n/a"),
        ):
            rates = [loader_images_per_second(dataset, workers, args.batch, args.epochs) for workers in (0, 2)]
            out.write(f"| {size} | {name} | {build_cold} | {build_cached} | {rates[0]:.0f} | {rates[1]:.0f} | "
                      f"{model_rate:.0f} |\n")
            out.flush()


if __name__ == "__main__":
    main()
