"""The contrastive losses against float64 loop references written from DESIGN §2 and the papers."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F

from bcl.losses import BalancedSupCon, SupConLoss, balanced_supcon_loss, supcon_loss


def loop_reference(features, labels, prototypes=None, temperature=0.1, class_averaging=True, normalize=True):
    """DESIGN §2 term by term, one anchor and one contrast member at a time, in float64."""
    feats = features.double()
    if feats.dim() == 2:
        feats = feats[:, None]
    batch, views, _ = feats.shape
    members = [(feats[b, v], int(labels[b])) for v in range(views) for b in range(batch)]
    num_anchors = len(members)
    if prototypes is not None:
        members += [(prototypes[k].double(), k) for k in range(prototypes.shape[0])]
    if normalize:
        members = [(vec / vec.norm(), label) for vec, label in members]

    per_anchor = []
    for i in range(num_anchors):
        anchor, label = members[i]
        others = [(vec, lab) for j, (vec, lab) in enumerate(members) if j != i]
        positives = [vec for vec, lab in others if lab == label]
        if not positives:
            continue
        denominator = 0.0
        for k in {lab for _, lab in others}:
            class_members = [vec for vec, lab in others if lab == k]
            weight = 1.0 / len(class_members) if class_averaging else 1.0
            denominator = denominator + weight * sum(torch.exp(anchor @ vec / temperature) for vec in class_members)
        mean_positive = sum(anchor @ vec / temperature for vec in positives) / len(positives)
        per_anchor.append(torch.log(denominator) - mean_positive)
    if not per_anchor:
        return torch.zeros((), dtype=torch.float64)
    return torch.stack(per_anchor).mean()


def khosla_supcon(features, labels, temperature):
    """SupCon L_out in the form of the widely used reference (contrast_mode='all', base_temperature=τ)."""
    batch, views, _ = features.shape
    contrast = torch.cat(torch.unbind(features, dim=1), dim=0)
    logits = contrast @ contrast.T / temperature
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    mask = (labels[:, None] == labels[None, :]).double().repeat(views, views)
    logits_mask = 1.0 - torch.eye(batch * views, dtype=torch.float64)
    mask = mask * logits_mask
    exp_logits = torch.exp(logits) * logits_mask
    log_prob = logits - torch.log(exp_logits.sum(1, keepdim=True))
    mean_log_prob_pos = (mask * log_prob).sum(1) / mask.sum(1)
    return (-mean_log_prob_pos).view(views, batch).mean()


def official_balscl(prototypes, features, labels, temperature):
    """The official BalSCL computation for two views (per-column class counts include prototypes)."""
    batch = features.shape[0]
    num_classes = prototypes.shape[0]
    contrast = torch.cat([torch.cat(torch.unbind(features, dim=1), dim=0), prototypes], dim=0)
    targets = torch.cat([labels.repeat(2), torch.arange(num_classes)])
    class_count = torch.eye(num_classes, dtype=torch.float64)[targets].sum(dim=0)
    mask = (targets[: 2 * batch, None] == targets[None, :]).double()
    logits_mask = torch.ones_like(mask)
    logits_mask[torch.arange(2 * batch), torch.arange(2 * batch)] = 0
    mask = mask * logits_mask
    logits = contrast[: 2 * batch] @ contrast.T / temperature
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    exp_logits = torch.exp(logits) * logits_mask
    per_instance_weight = class_count[targets][None, :].expand(2 * batch, -1) - mask
    log_prob = logits - torch.log((exp_logits / per_instance_weight).sum(dim=1, keepdim=True))
    mean_log_prob_pos = (mask * log_prob).sum(1) / mask.sum(1)
    return (-mean_log_prob_pos).view(2, batch).mean()


def random_case(rng: random.Random):
    views = rng.choice([1, 2, 3])
    batch = rng.randint(1, 12)
    num_classes = rng.randint(1, 6)
    dim = rng.choice([3, 8, 16])
    if rng.random() < 0.15:
        labels = torch.full((batch,), rng.randrange(num_classes))  # single-class batch
    else:
        labels = torch.tensor([rng.randrange(num_classes) for _ in range(batch)])  # some classes absent
    scale = rng.choice([0.3, 1.0, 5.0])  # unnormalised inputs
    features = torch.randn(batch, views, dim, dtype=torch.float64) * scale
    prototypes = torch.randn(num_classes, dim, dtype=torch.float64) * scale if rng.random() < 0.5 else None
    return features, labels, prototypes


@pytest.mark.parametrize("seed", range(120))
def test_matches_loop_reference_on_random_cases(seed):
    rng = random.Random(seed)
    torch.manual_seed(seed)
    features, labels, prototypes = random_case(rng)
    temperature = rng.choice([0.07, 0.1, 0.5, 1.0])
    class_averaging = rng.random() < 0.5
    normalize = rng.random() < 0.8
    if not normalize:
        features = F.normalize(features, dim=-1) * 0.9  # keep exp() of the loop reference in range
        prototypes = None if prototypes is None else F.normalize(prototypes, dim=-1) * 0.9

    feats64 = features.clone().requires_grad_(True)
    ours = balanced_supcon_loss(feats64, labels, prototypes, temperature, class_averaging, normalize)
    ref_feats = features.clone().requires_grad_(True)
    expected = loop_reference(ref_feats, labels, prototypes, temperature, class_averaging, normalize)
    assert ours.dtype == torch.float64
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-10)

    if expected.requires_grad:
        ours.backward()
        expected.backward()
        torch.testing.assert_close(feats64.grad, ref_feats.grad, rtol=1e-8, atol=1e-10)

    # float32 inputs follow the float64 reference to float32 precision
    ours32 = balanced_supcon_loss(
        features.float(), labels, None if prototypes is None else prototypes.float(), temperature, class_averaging,
        normalize,
    )
    assert ours32.dtype == torch.float32
    torch.testing.assert_close(ours32.double(), expected.detach(), rtol=1e-4, atol=1e-4)


def test_one_view_flat_input_equals_bvd_input():
    torch.manual_seed(0)
    features, labels = torch.randn(10, 16), torch.randint(0, 3, (10,))
    torch.testing.assert_close(balanced_supcon_loss(features, labels), balanced_supcon_loss(features[:, None], labels))


@pytest.mark.parametrize("views", [2, 3])
@pytest.mark.parametrize("temperature", [0.07, 0.1, 0.5])
def test_no_averaging_no_prototypes_is_supcon_l_out(views, temperature):
    torch.manual_seed(views)
    features = F.normalize(torch.randn(16, views, 32, dtype=torch.float64), dim=-1)
    labels = torch.randint(0, 4, (16,))
    expected = khosla_supcon(features, labels, temperature)
    torch.testing.assert_close(supcon_loss(features, labels, temperature), expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(
        BalancedSupCon(temperature, class_averaging=False)(features, labels), expected, rtol=1e-10, atol=1e-10
    )


def nt_xent(view_a, view_b, temperature):
    """SimCLR's NT-Xent: softmax cross-entropy of each view against its partner view."""
    z = F.normalize(torch.cat([view_a, view_b]), dim=1)
    n = view_a.shape[0]
    logits = (z @ z.T / temperature).fill_diagonal_(float("-inf"))
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return F.cross_entropy(logits, partner)


def test_instance_labels_give_simclr():
    torch.manual_seed(1)
    features = torch.randn(12, 2, 32, dtype=torch.float64)
    expected = nt_xent(features[:, 0], features[:, 1], 0.2)
    torch.testing.assert_close(supcon_loss(features, None, 0.2), expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(SupConLoss(0.2)(features), expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(supcon_loss(features, torch.arange(100, 112), 0.2), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("seed", range(5))
def test_two_views_with_prototypes_is_official_balscl(seed):
    torch.manual_seed(seed)
    num_classes = 5
    features = F.normalize(torch.randn(20, 2, 16, dtype=torch.float64), dim=-1)
    prototypes = F.normalize(torch.randn(num_classes, 16, dtype=torch.float64), dim=-1)
    labels = torch.tensor([0] * 12 + [1] * 4 + [2] * 3 + [4])  # class 3 absent, class 4 a singleton
    expected = official_balscl(prototypes, features, labels, 0.07)
    ours = BalancedSupCon(temperature=0.07)(features, labels, prototypes)
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("class_averaging", [True, False])
@pytest.mark.parametrize("with_prototypes", [True, False])
def test_gradcheck_float64(class_averaging, with_prototypes):
    torch.manual_seed(0)
    features = torch.randn(5, 2, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 2, 0])
    prototypes = torch.randn(3, 4, dtype=torch.float64, requires_grad=True) if with_prototypes else None
    inputs = (features, prototypes) if with_prototypes else (features,)

    def loss_fn(*tensors):
        protos = tensors[1] if with_prototypes else None
        return balanced_supcon_loss(tensors[0], labels, protos, 0.5, class_averaging)

    assert torch.autograd.gradcheck(loss_fn, inputs)


def test_with_prototypes_every_anchor_has_positives_and_loss_is_finite():
    # V = 2, every image its own class, singleton classes everywhere: still ≥ 2 positives each.
    torch.manual_seed(0)
    loss = balanced_supcon_loss(torch.randn(5, 2, 8), torch.arange(5), torch.randn(5, 8))
    assert torch.isfinite(loss) and loss > 0


def test_no_positive_anywhere_gives_zero_loss_with_zero_gradients():
    features = torch.randn(6, 8, requires_grad=True)  # V = 1, six singleton classes
    loss = balanced_supcon_loss(features, torch.arange(6))
    assert loss.item() == 0.0
    loss.backward()
    assert features.grad is not None and torch.count_nonzero(features.grad) == 0

    single = torch.randn(1, 1, 8, requires_grad=True)  # one anchor and nothing to contrast with
    loss = supcon_loss(single, torch.tensor([3]))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(single.grad).all()


def test_anchors_without_positives_are_excluded_from_the_mean():
    torch.manual_seed(2)
    z = F.normalize(torch.randn(5, 8, dtype=torch.float64), dim=1)
    labels = torch.tensor([0, 0, 1, 1, 2])  # one view: image 4 has no positive but is a negative
    sims = z @ z.T / 0.1
    terms = []
    for i in range(4):  # plain SupCon: L_i = log Σ_{a≠i} exp s(i,a) − s(i, partner)
        partner = i ^ 1
        terms.append(torch.logsumexp(sims[i][torch.arange(5) != i], 0) - sims[i, partner])
    expected = torch.stack(terms).mean()  # the mean over 4 anchors, not 5
    torch.testing.assert_close(supcon_loss(z, labels, 0.1), expected, rtol=1e-10, atol=1e-10)


def test_loss_only_depends_on_in_batch_counts():
    torch.manual_seed(3)
    features, labels = torch.randn(8, 2, 16), torch.tensor([0, 0, 0, 0, 1, 1, 2, 3])
    protos = torch.randn(4, 16)
    a = balanced_supcon_loss(features, labels, protos)
    # the same batch with its labels renamed consistently (and prototypes permuted alike)
    perm = torch.tensor([2, 0, 3, 1])
    torch.testing.assert_close(a, balanced_supcon_loss(features, perm[labels], protos[torch.argsort(perm)]))


def test_bf16_autocast_stays_finite_and_close_to_fp32():
    torch.manual_seed(0)
    head = torch.nn.Linear(32, 16)
    inputs = torch.randn(32, 2, 32)
    labels = torch.randint(0, 5, (32,))
    prototypes = torch.randn(5, 16)
    criterion = BalancedSupCon(temperature=0.07)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        features = head(inputs)
        assert features.dtype == torch.bfloat16
        loss = criterion(features, labels, prototypes)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(head.weight.grad).all()
    reference = criterion(head(inputs).float(), labels, prototypes)
    torch.testing.assert_close(loss, reference, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("with_prototypes", [True, False])
def test_extreme_temperature_and_feature_norm_stay_finite(normalize, with_prototypes):
    torch.manual_seed(0)
    features = (F.normalize(torch.randn(16, 2, 32), dim=-1) * 1e4).requires_grad_(True)
    labels = torch.randint(0, 3, (16,))
    prototypes = F.normalize(torch.randn(3, 32), dim=-1) * 1e4 if with_prototypes else None
    loss = balanced_supcon_loss(features, labels, prototypes, temperature=0.01, normalize=normalize)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(features.grad).all()


@pytest.mark.parametrize("scale", [1e20, 1e30, 1e-20, 1e-30])
@pytest.mark.parametrize("criterion", [BalancedSupCon(), SupConLoss()], ids=["bcl", "supcon"])
def test_loss_is_scale_invariant_in_float32_at_huge_and_tiny_norms(scale, criterion):
    # Squaring entries of norm 1e20 overflows float32 (and 1e-20 underflows); the loss must not notice.
    torch.manual_seed(0)
    features = torch.randn(16, 2, 32)
    labels = torch.randint(0, 3, (16,))
    reference = criterion(features.double(), labels)
    scaled = (features * scale).requires_grad_(True)
    loss = criterion(scaled, labels)
    torch.testing.assert_close(loss.double(), reference, rtol=1e-5, atol=1e-5)
    loss.backward()
    assert torch.isfinite(scaled.grad).all() and scaled.grad.abs().max() > 0


def test_prototypes_of_huge_norm_are_normalised_too():
    torch.manual_seed(0)
    features, labels, prototypes = torch.randn(8, 2, 16), torch.randint(0, 3, (8,)), torch.randn(3, 16)
    reference = balanced_supcon_loss(features.double(), labels, prototypes.double())
    torch.testing.assert_close(balanced_supcon_loss(features, labels, prototypes * 1e25).double(), reference,
                               rtol=1e-5, atol=1e-5)


def test_tiny_temperature_far_negatives_do_not_underflow_to_minus_inf():
    # every non-self similarity is -1: exp((-1 - 1) / 0.01) underflows in float32 unless the row max
    # is taken over the entries of the denominator rather than including the anchor itself
    features = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])[:, None].repeat(1, 2, 1)
    features[:, 1] += 1e-3
    loss = balanced_supcon_loss(features, torch.tensor([0, 1]), temperature=0.01)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.int16, torch.uint8])
def test_label_dtype_does_not_matter(dtype):
    torch.manual_seed(0)
    features, labels, protos = torch.randn(8, 2, 16), torch.tensor([0, 1, 1, 2, 2, 2, 0, 1]), torch.randn(3, 16)
    torch.testing.assert_close(
        balanced_supcon_loss(features, labels.to(dtype), protos), balanced_supcon_loss(features, labels, protos)
    )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_labels_on_another_device_than_features():
    features, labels = torch.randn(8, 2, 16, device="cuda"), torch.tensor([0, 1, 1, 2, 2, 2, 0, 1])
    torch.testing.assert_close(
        balanced_supcon_loss(features, labels).cpu(), balanced_supcon_loss(features.cpu(), labels), rtol=1e-4, atol=1e-4
    )


def test_module_state_dict_is_empty_and_repr_names_settings():
    criterion = BalancedSupCon(temperature=0.07, class_averaging=False)
    assert dict(criterion.state_dict()) == {}
    assert "temperature=0.07" in repr(criterion) and "class_averaging=False" in repr(criterion)


# --- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0, -0.1, float("nan"), True, "0.1"])
def test_bad_temperature(temperature):
    with pytest.raises(ValueError, match="temperature"):
        BalancedSupCon(temperature=temperature)
    with pytest.raises(ValueError, match="temperature"):
        SupConLoss(temperature=temperature)
    with pytest.raises(ValueError, match="temperature"):
        balanced_supcon_loss(torch.randn(4, 8), torch.zeros(4, dtype=torch.long), temperature=temperature)


@pytest.mark.parametrize("shape", [(8,), (2, 2, 2, 8)])
def test_features_of_wrong_rank_name_both_forms(shape):
    with pytest.raises(ValueError, match=r"\[B, V, D\].*\[N, D\]"):
        balanced_supcon_loss(torch.randn(*shape), torch.zeros(2, dtype=torch.long))


def test_labels_shape_mismatch_names_both_forms():
    with pytest.raises(ValueError, match=r"labels must have shape \[B\] = \[4\].*\[B, V, D\]"):
        balanced_supcon_loss(torch.randn(4, 2, 8), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="labels must have shape"):
        balanced_supcon_loss(torch.randn(4, 2, 8), torch.zeros(4, 1, dtype=torch.long))


def test_non_integer_labels():
    with pytest.raises(ValueError, match="labels must be an integer tensor.*float32"):
        balanced_supcon_loss(torch.randn(4, 8), torch.tensor([0.0, 1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="labels must be an integer tensor.*bool"):
        balanced_supcon_loss(torch.randn(4, 8), torch.tensor([True, False, True, False]))
    with pytest.raises(TypeError, match="labels must be a 1-D integer torch.Tensor"):
        balanced_supcon_loss(torch.randn(4, 8), [0, 1, 0, 1])


def test_labels_out_of_range():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\).*got a label 3"):
        balanced_supcon_loss(torch.randn(4, 8), torch.tensor([0, 1, 2, 3]), prototypes=torch.randn(3, 8))
    with pytest.raises(ValueError, match="non-negative"):
        balanced_supcon_loss(torch.randn(4, 8), torch.tensor([0, 1, -1, 1]))


def test_prototypes_that_do_not_fit():
    with pytest.raises(ValueError, match=r"prototypes must have shape \[C, D\] with D = 8.*\[3, 7\]"):
        balanced_supcon_loss(torch.randn(4, 8), torch.tensor([0, 1, 2, 0]), prototypes=torch.randn(3, 7))
    with pytest.raises(ValueError, match="prototypes must have shape"):
        balanced_supcon_loss(torch.randn(4, 8), torch.tensor([0, 1, 2, 0]), prototypes=torch.randn(3, 8, 1))


def test_non_finite_features_said_plainly():
    features = torch.randn(4, 2, 8)
    features[1, 0, 3] = float("nan")
    with pytest.raises(ValueError, match="features contain NaN or Inf"):
        BalancedSupCon()(features, torch.tensor([0, 1, 0, 1]))
    protos = torch.randn(2, 8)
    protos[0, 0] = float("inf")
    with pytest.raises(ValueError, match="prototypes contain NaN or Inf"):
        BalancedSupCon()(torch.randn(4, 2, 8), torch.tensor([0, 1, 0, 1]), protos)
    # the check can be switched off for speed; then NaN goes through as NaN
    assert math.isnan(BalancedSupCon(check_finite=False)(features, torch.tensor([0, 1, 0, 1])).item())


def test_empty_batch():
    with pytest.raises(ValueError, match="empty"):
        balanced_supcon_loss(torch.randn(0, 2, 8), torch.zeros(0, dtype=torch.long))
