"""A one-minute look at BalancedSupCon in a plain training loop, on synthetic long-tailed data.

Five Gaussian classes in 32-D with the transistor category's long tail (273 : 10 : 10 : 10 : 10)
are embedded by a small MLP trained with each contrastive loss; the embedding is then scored by a
nearest-class-mean classifier on a balanced held-out set. It shows how to call the losses from your
own loop; it says nothing about images (the training scripts do that).

Run:  python examples/loss_demo.py
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from sklearn.metrics import balanced_accuracy_score
from torch import nn

from bcl.losses import BalancedSupCon, SupConLoss
from bcl.samplers import ClassAwareSampler

TRAIN_COUNTS = [273, 10, 10, 10, 10]
TEST_PER_CLASS = 200
DIM, EMBED_DIM, STEPS, BATCH = 32, 16, 300, 64


def make_data(generator: torch.Generator):
    """Draws the long-tailed training set and the balanced test set around the same class means.

    Returns:
        ``((x, y), (x_test, y_test))``: points ``[N, DIM]`` and labels ``[N]``, ``N = sum(TRAIN_COUNTS)`` for
        training and ``TEST_PER_CLASS`` per class for the test set.
    """
    means = torch.randn(len(TRAIN_COUNTS), DIM, generator=generator) * 0.6

    def sample(counts):
        labels = torch.cat([torch.full((n,), k) for k, n in enumerate(counts)])
        return means[labels] + torch.randn(len(labels), DIM, generator=generator), labels

    return sample(TRAIN_COUNTS), sample([TEST_PER_CLASS] * len(TRAIN_COUNTS))


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Two noisy views per point, shape [B, 2, DIM]."""
    return x[:, None] + 0.3 * torch.randn(x.shape[0], 2, x.shape[1], generator=generator)


def train_and_score(method: str, train, test, seed: int) -> tuple[float, float]:
    """Trains a fresh MLP embedding with ``method`` and scores it by nearest class mean.

    Args:
        method: One of the names :func:`main` lists; ``"BCL..."`` uses :class:`~bcl.losses.BalancedSupCon` with
            learned prototypes (else :class:`~bcl.losses.SupConLoss`), ``"...sampler"`` square-root sampling.
        train: ``(x, y)``: training points ``[N, DIM]`` and labels ``[N]``.
        test: ``(x_test, y_test)``: the balanced test set, shaped the same way.
        seed: Seeds the model, the sampler and the augmentation noise.

    Returns:
        ``(final_loss, balanced_accuracy)``: the mean loss of the last 20 steps and the test balanced accuracy.
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    (x, y), (x_test, y_test) = train, test
    model = nn.Sequential(nn.Linear(DIM, 64), nn.ReLU(), nn.Linear(64, EMBED_DIM))
    prototypes = nn.Parameter(torch.randn(len(TRAIN_COUNTS), EMBED_DIM)) if method.startswith("BCL") else None
    params = list(model.parameters()) + ([prototypes] if prototypes is not None else [])
    optimizer = torch.optim.Adam(params, lr=3e-3)
    criterion = BalancedSupCon(temperature=0.1) if method.startswith("BCL") else SupConLoss(temperature=0.1)
    q = 0.5 if "sampler" in method else 1.0
    sampler = ClassAwareSampler(y, q=q, num_samples=STEPS * BATCH, seed=seed)
    order = torch.tensor(list(sampler)).view(STEPS, BATCH)

    losses = []
    for batch_indices in order:
        views = augment(x[batch_indices], generator)
        features = model(views)  # [B, 2, EMBED_DIM]
        if prototypes is not None:
            loss = criterion(features, y[batch_indices], prototypes)
        else:
            loss = criterion(features, y[batch_indices])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())

    with torch.no_grad():
        train_embed, test_embed = F.normalize(model(x), dim=1), F.normalize(model(x_test), dim=1)
        class_means = F.normalize(torch.stack([train_embed[y == k].mean(0) for k in range(len(TRAIN_COUNTS))]), dim=1)
        predictions = (test_embed @ class_means.T).argmax(1)
    return sum(losses[-20:]) / 20, balanced_accuracy_score(y_test.numpy(), predictions.numpy())


def main() -> None:
    """Prints a table of final loss and balanced accuracy (mean ± std over 3 seeds) for each method."""
    generator = torch.Generator().manual_seed(0)
    train, test = make_data(generator)
    methods = ["SupCon", "BCL (class-averaged + prototypes)", "BCL + square-root sampler"]
    seeds = [0, 1, 2]
    start = time.perf_counter()
    print(f"Synthetic long-tailed data: train counts {TRAIN_COUNTS}, balanced test set of {TEST_PER_CLASS}/class")
    print(f"{STEPS} steps x batch {BATCH} x 2 views, seeds {seeds}; nearest-class-mean balanced accuracy\n")
    print(f"| {'method':<36} | final loss | balanced accuracy (mean ± std) |")
    print(f"|{'-' * 38}|------------|--------------------------------|")
    for method in methods:
        scores = [train_and_score(method, train, test, seed) for seed in seeds]
        accs = torch.tensor([s[1] for s in scores])
        final_loss = sum(s[0] for s in scores) / len(scores)
        print(f"| {method:<36} | {final_loss:10.3f} | {accs.mean():.3f} ± {accs.std():.3f}{'':<17} |")
    print(f"\nDone in {time.perf_counter() - start:.0f} s. The image training scripts arrive with a later issue.")


if __name__ == "__main__":
    main()
