r"""Supervised contrastive losses: Balanced Contrastive Learning (BCL) and SupCon.

The maths is DESIGN §2. For anchor ``i`` with label ``y`` and ``s(i, a) = z_i · a / τ``::

    P(i) = A_y \ {i}
    D(i) = Σ_k w_k(i) Σ_{a ∈ A_k \ {i}} exp s(i, a)
    L_i  = log D(i) − mean_{p ∈ P(i)} s(i, p)

with ``w_k(i) = 1 / |A_k \ {i}|`` under class averaging and ``w_k(i) = 1`` without it.
The contrast set ``A`` is every view embedding plus, optionally, one prototype per class;
only view embeddings are anchors. ``L`` is the mean of ``L_i`` over anchors that have a positive.
"""

from __future__ import annotations

from typing import Optional

import torch
from einops import rearrange
from torch import Tensor, nn

from bcl._checks import is_real
from bcl._tensors import l2_normalize
from bcl.distributed import all_gather_no_grad, all_gather_with_grad, all_reduce_sum, get_rank, get_world_size

__all__ = ["balanced_supcon_loss", "supcon_loss", "BalancedSupCon", "SupConLoss"]

_FEATURE_FORMS = "[B, V, D] (B images, V views each) or [N, D] (one view)"


def _check_temperature(temperature: float) -> float:
    if not is_real(temperature) or not temperature > 0:
        raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
    return float(temperature)


def _views_and_labels(features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, int]:
    """Checks shapes and flattens ``features`` view-major into anchors ``[V·B, D]``."""
    if not isinstance(features, Tensor):
        raise TypeError(f"features must be a torch.Tensor of shape {_FEATURE_FORMS}, got {type(features).__name__}")
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a 1-D integer torch.Tensor, got {type(labels).__name__}")
    if features.dim() == 2:
        features = features.unsqueeze(1)
    elif features.dim() != 3:
        raise ValueError(f"features must have shape {_FEATURE_FORMS}; got shape {list(features.shape)}")
    batch, views, dim = features.shape
    if views == 0 or dim == 0:
        raise ValueError(f"features must have at least one view and one dimension; got shape {list(features.shape)}")
    if labels.dim() != 1 or labels.shape[0] != batch:
        raise ValueError(
            f"labels must have shape [B] = [{batch}] to match features of shape {list(features.shape)} "
            f"(accepted: features {_FEATURE_FORMS} with labels [B] or [N]); got labels of shape {list(labels.shape)}"
        )
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor (class indices), got dtype {labels.dtype}")
    if batch == 0:
        raise ValueError("features is empty: the batch must hold at least one image")
    # View-major order (all first views, then all second views, ...) as in SupCon and BCL.
    anchors = rearrange(features, "b v d -> (v b) d")
    return anchors, labels.to(device=features.device, dtype=torch.long).repeat(views), views


def balanced_supcon_loss(
    features: Tensor,
    labels: Tensor,
    prototypes: Optional[Tensor] = None,
    temperature: float = 0.1,
    class_averaging: bool = True,
    normalize: bool = True,
    check_finite: bool = True,
    gather: bool = False,
) -> Tensor:
    """Balanced supervised contrastive loss (BCL, Zhu et al. CVPR 2022), DESIGN §2.

    Class averaging divides each class's share of the denominator by the number of its members in
    the contrast set, so head classes no longer dominate it; prototypes ("class complement") make
    every class present in every batch. Computed in float32 (float64 if the input is float64) with
    autocast disabled, whatever the caller's precision.

    Args:
        features: ``[B, V, D]`` (V ≥ 1 views of B images) or ``[N, D]`` (one view).
        labels: ``[B]`` (or ``[N]``) integer class indices, any integer dtype and any device.
            Without prototypes any non-negative integers; with prototypes in ``[0, C)``.
        prototypes: ``[C, D]`` class prototypes appended to the contrast set (never anchors), or None.
        temperature: τ > 0.
        class_averaging: weight each class by one over its size in the contrast set (BCL);
            False gives plain SupCon.
        normalize: L2-normalise features and prototypes first. Turn off only if they already are.
        check_finite: raise if features or prototypes hold NaN/Inf (costs one device sync).
        gather: in multi-process training, contrast this process's anchors with the view embeddings
            of every process (gathered with gradients) plus the prototypes (identical on every rank,
            appended once); class counts come from the global batch. The returned value is the loss
            of the concatenated global batch on every process; its gradient is scaled so that
            DistributedDataParallel's averaging over processes gives exactly the single-process
            gradient of the global loss (feature and prototype gradients on each process are
            ``world_size`` times its share), so back-propagate it as is. No effect in a single process.

    Returns:
        Scalar loss: the mean of ``L_i`` over anchors with at least one positive; 0 (still attached
        to the graph, zero gradients) when no anchor has one.

    Example:
        >>> import torch
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> features = torch.randn(8, 2, 16)              # 8 images, 2 views, D = 16
        >>> labels = torch.tensor([0, 0, 0, 0, 0, 1, 1, 2])
        >>> prototypes = torch.randn(3, 16)               # one per class
        >>> loss = balanced_supcon_loss(features, labels, prototypes, temperature=0.1)
        >>> loss.shape, bool(loss > 0)
        (torch.Size([]), True)
    """
    temperature = _check_temperature(temperature)
    anchors, anchor_labels, _ = _views_and_labels(features, labels)
    num_anchors, dim = anchors.shape
    if check_finite and not bool(torch.isfinite(anchors).all()):
        raise ValueError("features contain NaN or Inf values; the contrastive loss would be NaN")
    if int(anchor_labels.min()) < 0:
        raise ValueError(f"labels must be non-negative class indices, got minimum {int(anchor_labels.min())}")
    if prototypes is not None:
        if not isinstance(prototypes, Tensor) or prototypes.dim() != 2 or prototypes.shape[1] != dim:
            shape = list(prototypes.shape) if isinstance(prototypes, Tensor) else type(prototypes).__name__
            raise ValueError(f"prototypes must have shape [C, D] with D = {dim} (the feature dimension); got {shape}")
        if int(anchor_labels.max()) >= prototypes.shape[0]:
            raise ValueError(
                f"labels must lie in [0, {prototypes.shape[0]}) to match prototypes of shape "
                f"{list(prototypes.shape)}; got a label {int(anchor_labels.max())}"
            )
        if check_finite and not bool(torch.isfinite(prototypes).all()):
            raise ValueError("prototypes contain NaN or Inf values; the contrastive loss would be NaN")

    compute_dtype = torch.promote_types(anchors.dtype, torch.float32)
    with torch.autocast(device_type=anchors.device.type, enabled=False):
        anchors = anchors.to(compute_dtype)
        # The contrast set's view embeddings: this process's, or every process's in rank order (gathered
        # with gradients, so each process's loss share also reaches the rows other processes own).
        distributed = gather and get_world_size() > 1
        views = all_gather_with_grad(anchors) if distributed else anchors
        view_labels = all_gather_no_grad(anchor_labels) if distributed else anchor_labels
        first_anchor = get_rank() * num_anchors if distributed else 0
        if prototypes is None:
            # Compact arbitrary label values (e.g. instance ids) to 0..K-1 so bincount stays O(N).
            view_labels = torch.unique(view_labels, return_inverse=True)[1]
            num_classes = int(view_labels.max()) + 1
            contrast, contrast_labels = views, view_labels
        else:
            num_classes = prototypes.shape[0]
            contrast = torch.cat([views, prototypes.to(device=anchors.device, dtype=compute_dtype)])
            contrast_labels = torch.cat([view_labels, torch.arange(num_classes, device=anchors.device)])
        anchor_labels = view_labels[first_anchor : first_anchor + num_anchors]
        if normalize:
            anchors = l2_normalize(anchors, dim=1)
            contrast = l2_normalize(contrast, dim=1)
        # Scaling the [V·B, D] anchors instead of the similarity matrix saves a pass over the matrix.
        scaled_anchors = anchors / temperature
        logits = scaled_anchors @ contrast.T  # s(i, a): [V·B, V·B_global + C], the only matrix-sized product

        # |A_k|: members of class k in the contrast set; an anchor's own class loses the anchor itself.
        class_sizes = torch.bincount(contrast_labels, minlength=num_classes)
        own_class_size = class_sizes[anchor_labels] - 1  # |A_y(i)| = |P(i)|
        has_positive = own_class_size > 0
        # The mean runs over every anchor with a positive in the (global) batch, on whichever process.
        anchors_with_positives = (class_sizes[view_labels] > 1).sum().clamp_min(1)

        # The anchor is no member of its own contrast set: -inf at its own column makes exp() drop it
        # from every sum without a [V·B, M] boolean "self" mask.
        rows = torch.arange(num_anchors, device=logits.device)
        minus_inf = torch.tensor(float("-inf"), dtype=logits.dtype, device=logits.device)
        # In place throughout: the matrix product's backward needs only its inputs, and exp_ saves its
        # own output, so no second matrix-sized buffer is kept alive.
        logits.index_put_((rows, rows + first_anchor), minus_inf)
        # Shifting by the row max over the entries D(i) sums makes the largest term exp(0) = 1, so
        # log D(i) cannot underflow to -inf even at tiny temperatures.
        row_max = logits.detach().amax(dim=1)
        row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
        exp_logits = logits.sub_(row_max[:, None]).exp_()

        if class_averaging:
            # Σ_a exp / |A_{y_a}| weights the anchor's own class by 1/|A_y| instead of 1/|A_y(i)|;
            # add back the difference with one masked row sum rather than a [V·B, M] weight matrix.
            inverse_sizes = 1.0 / class_sizes.to(compute_dtype)
            same_class = anchor_labels[:, None] == contrast_labels[None, :]
            own_sum = torch.where(same_class, exp_logits, 0.0).sum(dim=1)  # the anchor's own term is 0
            own_weight_fix = 1.0 / own_class_size.clamp_min(1).to(compute_dtype) - inverse_sizes[anchor_labels]
            denominator = exp_logits @ inverse_sizes[contrast_labels] + own_sum * own_weight_fix
        else:
            denominator = exp_logits.sum(dim=1)
        # An anchor alone in the contrast set has D(i) = 0; it has no positive either and is dropped,
        # but log(0) would still poison the backward pass, so give it a harmless value.
        denominator = torch.where(has_positive, denominator, torch.ones_like(denominator))

        # Σ_{p ∈ P(i)} s(i, p) = z_i/τ · (Σ_{a ∈ A_y} a − z_i): per-class sums of the contrast vectors
        # give every anchor's positive sum in O((V·B + C)·D), with no masked pass over the matrix.
        class_sums = torch.zeros(num_classes, dim, dtype=compute_dtype, device=contrast.device)
        class_sums = class_sums.index_add(0, contrast_labels, contrast)
        positive_sum = (scaled_anchors * (class_sums[anchor_labels] - anchors)).sum(dim=1)
        mean_positive_logit = positive_sum / own_class_size.clamp_min(1) - row_max
        per_anchor = torch.log(denominator) - mean_positive_logit
        per_anchor = torch.where(has_positive, per_anchor, torch.zeros_like(per_anchor))
        share = per_anchor.sum() / anchors_with_positives
        if not distributed:
            return share
        # Every process reports the global loss. Its share's gradient (the gather's backward adds the
        # other processes' shares for the rows this process owns) is scaled by the world size because
        # DDP divides the summed gradients by it: the averaged gradient is then the global loss's.
        total = all_reduce_sum(share.detach().clone())
        scaled = share * get_world_size()
        return scaled + (total - scaled.detach())


def supcon_loss(
    features: Tensor,
    labels: Optional[Tensor] = None,
    temperature: float = 0.1,
    normalize: bool = True,
    check_finite: bool = True,
    gather: bool = False,
) -> Tensor:
    """Supervised contrastive loss, SupCon ``L_out`` (Khosla et al. 2020); SimCLR without labels.

    The same function as :func:`balanced_supcon_loss` with class averaging off and no prototypes;
    equal to the reference ``SupConLoss(contrast_mode='all', base_temperature=temperature)`` when
    every anchor has a positive.

    Args:
        features: ``[B, V, D]`` or ``[N, D]``.
        labels: ``[B]`` integer labels, or None for SimCLR / NT-Xent (each image its own class,
            so the positives of a view are the other views of the same image; needs V ≥ 2).
        temperature: τ > 0.
        normalize: L2-normalise features first.
        check_finite: raise if features hold NaN/Inf.
        gather: contrast with every process's features (see :func:`balanced_supcon_loss`).

    Returns:
        Scalar loss.

    Example:
        >>> import torch
        >>> features = torch.nn.functional.normalize(torch.ones(4, 2, 8), dim=-1)
        >>> round(supcon_loss(features, temperature=0.5).item(), 4)  # all views identical: log(7) − 0
        1.9459
    """
    if labels is None:
        if not isinstance(features, Tensor):
            raise TypeError(f"features must be a torch.Tensor of shape {_FEATURE_FORMS}")
        if features.dim() != 3 or features.shape[1] < 2:
            raise ValueError(
                f"supcon_loss without labels (SimCLR) needs features [B, V, D] with V >= 2 views: the positives "
                f"of a view are the other views of its image; got shape {list(features.shape)}"
            )
        # Instance ids must stay distinct across processes when the batch is gathered.
        offset = get_rank() * features.shape[0] if gather else 0
        labels = torch.arange(offset, offset + features.shape[0], device=features.device)
    return balanced_supcon_loss(
        features, labels, None, temperature, class_averaging=False, normalize=normalize,
        check_finite=check_finite, gather=gather,
    )


class BalancedSupCon(nn.Module):
    """Balanced supervised contrastive loss as a module; see :func:`balanced_supcon_loss`.

    Args:
        temperature: τ > 0 (paper: 0.07 for ImageNet-LT, 0.1 for CIFAR-LT).
        class_averaging: the BCL class-averaged denominator; False gives SupCon.
        normalize: L2-normalise features and prototypes inside the loss.
        check_finite: raise on NaN/Inf inputs instead of returning a NaN loss.
        gather: in multi-process training, contrast with every process's features (the loss and
            feature gradients of the global batch; see :func:`balanced_supcon_loss`).

    Shapes:
        features ``[B, V, D]`` or ``[N, D]``; labels ``[B]``; prototypes ``[C, D]`` or None;
        output a scalar.

    Example:
        >>> import torch
        >>> criterion = BalancedSupCon(temperature=0.07)
        >>> features = torch.randn(6, 2, 32, requires_grad=True)
        >>> labels = torch.tensor([0, 0, 0, 1, 1, 2])
        >>> loss = criterion(features, labels, prototypes=torch.randn(3, 32))
        >>> loss.backward()
        >>> features.grad.shape
        torch.Size([6, 2, 32])
    """

    def __init__(
        self,
        temperature: float = 0.1,
        class_averaging: bool = True,
        normalize: bool = True,
        check_finite: bool = True,
        gather: bool = False,
    ) -> None:
        super().__init__()
        self.temperature = _check_temperature(temperature)
        self.class_averaging = bool(class_averaging)
        self.normalize = bool(normalize)
        self.check_finite = bool(check_finite)
        self.gather = bool(gather)

    def forward(self, features: Tensor, labels: Tensor, prototypes: Optional[Tensor] = None) -> Tensor:
        """Scalar loss of ``features`` ``[B, V, D]`` or ``[N, D]``, ``labels`` ``[B]``, ``prototypes`` ``[C, D]``."""
        return balanced_supcon_loss(
            features, labels, prototypes, self.temperature, self.class_averaging, self.normalize,
            self.check_finite, self.gather,
        )

    def extra_repr(self) -> str:
        """The settings shown in the module's repr."""
        return (f"temperature={self.temperature}, class_averaging={self.class_averaging}, "
                f"normalize={self.normalize}, gather={self.gather}")


class SupConLoss(nn.Module):
    """SupCon (``labels`` given) or SimCLR / NT-Xent (``labels=None``); see :func:`supcon_loss`.

    Args:
        temperature: τ > 0.
        normalize: L2-normalise features inside the loss.
        check_finite: raise on NaN/Inf inputs.
        gather: in multi-process training, contrast with every process's features.

    Shapes:
        features ``[B, V, D]`` or ``[N, D]``; labels ``[B]`` or None; output a scalar.

    Example:
        >>> import torch
        >>> SupConLoss(temperature=0.1)(torch.randn(4, 2, 8), torch.tensor([0, 1, 0, 1])).dim()
        0
    """

    def __init__(
        self, temperature: float = 0.1, normalize: bool = True, check_finite: bool = True, gather: bool = False
    ) -> None:
        super().__init__()
        self.temperature = _check_temperature(temperature)
        self.normalize = bool(normalize)
        self.check_finite = bool(check_finite)
        self.gather = bool(gather)

    def forward(self, features: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        """Scalar loss of ``features`` ``[B, V, D]`` or ``[N, D]`` with ``labels`` ``[B]`` (None: SimCLR)."""
        return supcon_loss(features, labels, self.temperature, self.normalize, self.check_finite, self.gather)

    def extra_repr(self) -> str:
        """The settings shown in the module's repr."""
        return f"temperature={self.temperature}, normalize={self.normalize}, gather={self.gather}"
