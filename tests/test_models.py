"""Tests for bcl.models: encoders and weight loading, heads, and the combined BCL model."""

from __future__ import annotations

import logging
import socket
import time
import urllib.request

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from bcl.models import (
    ENCODER_NAMES,
    BCLModel,
    Encoder,
    NormedLinear,
    PretrainedWeightsNotFoundError,
    ProjectionHead,
    PrototypeHead,
    WeightsLoadError,
    build_encoder,
    build_model,
    imagenet_weights_path,
)

ARCHS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}


def _images(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _assert_backbone_equals(encoder: Encoder, state: dict) -> None:
    own = encoder.backbone.state_dict()
    expected = {k: v for k, v in state.items() if not k.startswith("fc.")}
    assert set(own) == set(expected)
    for key, value in expected.items():
        assert torch.equal(own[key], value), key


@pytest.fixture
def no_network(monkeypatch):
    """Fail the test if anything tries to download."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(torch.hub, "urlopen", refuse, raising=False)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", refuse, raising=False)
    monkeypatch.setattr(socket.socket, "connect", refuse)


# --------------------------------------------------------------------------- encoders


@pytest.mark.parametrize("name", list(ARCHS))
def test_encoder_builds_with_feature_dim_and_shape(name):
    enc = build_encoder(name).eval()
    assert isinstance(enc, Encoder)
    assert enc.name == name
    assert enc.feature_dim == ARCHS[name] == ENCODER_NAMES[name]
    assert isinstance(enc.backbone.fc, nn.Identity)
    assert enc.backbone.conv1.kernel_size == (7, 7) and enc.backbone.conv1.stride == (2, 2)
    assert isinstance(enc.backbone.maxpool, nn.MaxPool2d)
    with torch.no_grad():
        out = enc(_images(2, 3, 32, 32))
    assert out.shape == (2, ARCHS[name])


@pytest.mark.parametrize("name", list(ARCHS))
def test_small_image_stem(name):
    enc = build_encoder(name, small_image_stem=True)
    conv1 = enc.backbone.conv1
    assert conv1.kernel_size == (3, 3) and conv1.stride == (1, 1) and conv1.padding == (1, 1)
    assert conv1.bias is None
    assert isinstance(enc.backbone.maxpool, nn.Identity)
    seen = {}

    def record(module, inputs, output):
        seen["layer4"] = output.shape

    enc.backbone.layer4.register_forward_hook(record)
    out = enc(_images(2, 3, 32, 32))  # training mode: BN over the batch must work too
    assert out.shape == (2, ARCHS[name])
    # Total stride 8 (not 32): a 32 px image leaves a 4x4 map after layer4.
    assert tuple(seen["layer4"][-2:]) == (4, 4)


def test_unknown_encoder_name_lists_valid_names():
    with pytest.raises(ValueError) as info:
        build_encoder("resnet101")
    for name in ARCHS:
        assert name in str(info.value)


def test_unknown_weights_string_names_accepted_forms():
    with pytest.raises(ValueError) as info:
        build_encoder("resnet18", weights="imagenet21k")
    message = str(info.value)
    assert "'none'" in message and "'imagenet'" in message and "path" in message


def test_weights_none_forms_are_random_init():
    assert isinstance(build_encoder("resnet18", weights=None), Encoder)
    assert isinstance(build_encoder("resnet18", weights="None"), Encoder)


# --------------------------------------------------------------------------- ImageNet weights


def test_imagenet_not_cached_with_downloads_off_raises_fast_without_network(hub_dir, no_network):
    expected, url, _ = imagenet_weights_path("resnet18")
    assert expected == hub_dir / "checkpoints" / "resnet18-f37072fd.pth"
    start = time.monotonic()
    with pytest.raises(PretrainedWeightsNotFoundError) as info:
        build_encoder("resnet18", weights="imagenet", allow_download=False)
    assert time.monotonic() - start < 10
    assert isinstance(info.value, FileNotFoundError)
    message = str(info.value)
    assert str(expected) in message and str(expected.parent) in message and "\n" not in message
    assert url in message and "download" in message.lower()
    assert "torchvision.models.resnet18(weights='IMAGENET1K_V1')" in message


def test_imagenet_cached_file_is_loaded(hub_dir, no_network):
    expected, _, _ = imagenet_weights_path("resnet18")
    expected.parent.mkdir(parents=True)
    torch.manual_seed(1)
    state = torchvision.models.resnet18(weights=None).state_dict()  # includes fc.* like the real file
    torch.save(state, expected)
    enc = build_encoder("resnet18", weights="imagenet")
    _assert_backbone_equals(enc, state)


def test_imagenet_with_small_stem_skips_conv1_with_warning(hub_dir, no_network, caplog):
    expected, _, _ = imagenet_weights_path("resnet18")
    expected.parent.mkdir(parents=True)
    state = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(state, expected)
    with caplog.at_level(logging.WARNING, logger="bcl.models.pretrained"):
        enc = build_encoder("resnet18", weights="imagenet", small_image_stem=True)
    assert any("conv1" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    own = enc.backbone.state_dict()
    assert own["conv1.weight"].shape == (64, 3, 3, 3)
    for key, value in state.items():
        if not key.startswith(("fc.", "conv1.")):
            assert torch.equal(own[key], value), key


# --------------------------------------------------------------------------- local weights files


def _source_state() -> dict:
    torch.manual_seed(2)
    return torchvision.models.resnet18(weights=None).state_dict()  # has fc.* keys


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(lambda s: s, id="plain"),
        pytest.param(lambda s: {"state_dict": s, "epoch": 3}, id="state_dict-key"),
        pytest.param(lambda s: {"model": s}, id="model-key"),
        pytest.param(lambda s: {"encoder": s}, id="encoder-key"),
        pytest.param(lambda s: {f"module.{k}": v for k, v in s.items()}, id="ddp-module-prefix"),
        pytest.param(lambda s: {"state_dict": {f"module.backbone.{k}": v for k, v in s.items()}}, id="module+backbone"),
        pytest.param(lambda s: {f"encoder.{k}": v for k, v in s.items()}, id="encoder-prefix"),
    ],
)
def test_local_weights_round_trip(tmp_path, wrap):
    state = _source_state()
    path = tmp_path / "weights.pt"
    torch.save(wrap(state), path)
    _assert_backbone_equals(build_encoder("resnet18", weights=path), state)
    _assert_backbone_equals(build_encoder("resnet18", weights=str(path)), state)


def test_local_weights_from_encoder_and_full_model_state(tmp_path):
    source = build_model("resnet18", 3, small_image_stem=True, proj_dim=8)
    reference = source.encoder.backbone.state_dict()
    torch.save(source.encoder.state_dict(), tmp_path / "enc.pt")  # keys "backbone.*"
    torch.save({"model": source.state_dict()}, tmp_path / "full.pt")  # heads present too
    for name in ("enc.pt", "full.pt"):
        enc = build_encoder("resnet18", weights=tmp_path / name, small_image_stem=True)
        _assert_backbone_equals(enc, reference)


def test_missing_local_file_names_path(tmp_path):
    path = tmp_path / "nope" / "weights.pth"
    with pytest.raises(FileNotFoundError) as info:
        build_encoder("resnet18", weights=path)
    assert str(path) in str(info.value)
    with pytest.raises(FileNotFoundError) as info:
        build_encoder("resnet18", weights=str(path))
    assert str(path) in str(info.value)


def test_resnet18_weights_into_resnet50_name_the_mismatch(tmp_path):
    path = tmp_path / "r18.pt"
    torch.save(_source_state(), path)
    with pytest.raises(WeightsLoadError) as info:
        build_encoder("resnet50", weights=path)
    message = str(info.value)
    assert str(path) in message and "resnet50" in message
    assert "missing" in message and "layer1.0.conv3.weight" in message
    assert "shape mismatch" in message and "layer1.0.conv1.weight" in message


def test_shape_mismatch_names_key_and_shapes(tmp_path):
    path = tmp_path / "small_stem.pt"
    torch.save(build_encoder("resnet18", small_image_stem=True).state_dict(), path)
    with pytest.raises(WeightsLoadError) as info:
        build_encoder("resnet18", weights=path)
    message = str(info.value)
    assert "conv1.weight" in message and "(64, 3, 3, 3)" in message and "(64, 3, 7, 7)" in message
    assert str(path) in message


def test_garbage_file_error_names_file(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"\x00this is not a checkpoint\xff" * 10)
    with pytest.raises(WeightsLoadError) as info:
        build_encoder("resnet18", weights=path)
    assert str(path) in str(info.value)


def test_file_without_state_dict_is_rejected(tmp_path):
    path = tmp_path / "meta.pt"
    torch.save({"epoch": 3, "config": {"lr": 0.1}}, path)
    with pytest.raises(WeightsLoadError) as info:
        build_encoder("resnet18", weights=path)
    assert str(path) in str(info.value) and "state_dict" in str(info.value)


# --------------------------------------------------------------------------- heads


def test_projection_head_unit_norm_and_default_hidden():
    head = ProjectionHead(16, out_dim=8)
    assert head.hidden_dim == 16
    z = head(_images(4, 16))
    assert z.shape == (4, 8)
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(4))
    layers = [type(m) for m in head.mlp]
    assert layers == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]


def test_normed_linear_is_scaled_cosine():
    clf = NormedLinear(16, 5, scale=30.0)
    assert clf.weight.shape == (5, 16)
    torch.testing.assert_close(clf.weight.norm(dim=1), torch.ones(5))  # unit-row init
    with torch.no_grad():
        clf.weight.mul_(torch.arange(1.0, 6.0)[:, None])  # norms must not matter
    x = _images(4, 16) * 7.0
    logits = clf(x)
    manual = torch.empty(4, 5)
    for i in range(4):
        for k in range(5):
            w = clf.weight[k].detach()
            manual[i, k] = 30.0 * torch.dot(x[i], w) / (x[i].norm() * w.norm())
    torch.testing.assert_close(logits.detach(), manual, rtol=1e-5, atol=1e-5)
    assert logits.abs().max() <= 30.0 + 1e-4
    # The bound is attained when x is parallel to a class weight.
    aligned = clf(clf.weight[2:3].detach() * 3.0)
    torch.testing.assert_close(aligned[0, 2], torch.tensor(30.0))


def test_prototype_head_unit_norm_and_gradient_reaches_classifier():
    clf = NormedLinear(16, 5)
    head = PrototypeHead(16, 32, 8)
    protos = head(clf.weight)
    assert protos.shape == (5, 8)
    torch.testing.assert_close(protos.norm(dim=-1), torch.ones(5))
    # A prototype loss (pull prototype 0 toward a fixed direction) must train the classifier.
    target = F.normalize(torch.ones(8), dim=0)
    loss = -(protos @ target).sum() + protos[0].pow(3).sum()
    loss.backward()
    assert clf.weight.grad is not None and clf.weight.grad.abs().sum() > 0


def test_prototype_head_rejects_single_class_in_training():
    head = PrototypeHead(16, 16, 8)
    with pytest.raises(ValueError, match="at least 2 classes"):
        head(torch.randn(1, 16))
    assert head.eval()(torch.randn(1, 16)).shape == (1, 8)
    with pytest.raises(ValueError, match=r"\[C, 16\]"):
        head(torch.randn(3, 15))


# --------------------------------------------------------------------------- BCLModel


@pytest.fixture(scope="module")
def encoder18() -> Encoder:
    return build_encoder("resnet18", small_image_stem=True)


@pytest.mark.parametrize("classifier", ["cosine", "linear"])
@pytest.mark.parametrize("prototypes", ["classifier", "learned", "none"])
def test_bcl_model_shapes(encoder18, classifier, prototypes):
    model = BCLModel(encoder18, num_classes=3, proj_dim=8, classifier=classifier, prototypes=prototypes)
    single = model(_images(2, 3, 32, 32))
    assert set(single) == {"features", "projections", "logits", "prototypes"}
    assert single["features"].shape == (2, 512)
    assert single["projections"].shape == (2, 8)
    assert single["logits"].shape == (2, 3)
    torch.testing.assert_close(single["projections"].norm(dim=-1), torch.ones(2))
    multi = model(_images(2, 2, 3, 32, 32))
    assert multi["features"].shape == (2, 2, 512)
    assert multi["projections"].shape == (2, 2, 8)
    assert multi["logits"].shape == (2, 2, 3)
    if prototypes == "none":
        assert single["prototypes"] is None and multi["prototypes"] is None
    else:
        assert multi["prototypes"].shape == (3, 8)
        torch.testing.assert_close(multi["prototypes"].norm(dim=-1), torch.ones(3))
    if classifier == "cosine":
        assert multi["logits"].abs().max() <= 30.0 + 1e-4


def test_multi_view_equals_separate_views_in_eval(encoder18):
    model = BCLModel(encoder18, num_classes=3, proj_dim=8).eval()
    images = _images(2, 3, 3, 32, 32)
    calls = []
    handle = model.encoder.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    with torch.no_grad():
        multi = model(images)
        assert calls == [6]  # all B*V views went through the encoder as one batch
        for v in range(3):
            single = model(images[:, v])
            for key in ("features", "projections", "logits"):
                torch.testing.assert_close(multi[key][:, v], single[key], rtol=1e-4, atol=1e-5)
    handle.remove()


def test_joint_loss_backward_reaches_classifier_through_prototypes(encoder18):
    model = BCLModel(encoder18, num_classes=3, proj_dim=8, prototypes="classifier")
    out = model(_images(2, 2, 3, 32, 32))
    # Only the prototype path, so a classifier gradient can only come through PrototypeHead.
    loss = (out["projections"].reshape(-1, 8) @ out["prototypes"].T).logsumexp(dim=1).mean()
    loss.backward()
    assert model.classifier.weight.grad.abs().sum() > 0
    assert model.prototype_head.mlp[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("shape", [(3, 32, 32), (2, 2, 2, 3, 32, 32), (2, 1, 32, 32), (2, 2, 4, 32, 32)])
def test_bad_input_shape_names_both_forms(encoder18, shape):
    model = BCLModel(encoder18, num_classes=3, proj_dim=8)
    with pytest.raises(ValueError) as info:
        model(torch.zeros(shape))
    message = str(info.value)
    assert "[B, 3, H, W]" in message and "[B, V, 3, H, W]" in message and str(tuple(shape)) in message


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"num_classes": 0}, "num_classes"),
        ({"num_classes": 1}, "num_classes"),  # prototypes="classifier" needs >= 2
        ({"num_classes": 2.0}, "num_classes"),
        ({"num_classes": 3, "classifier": "mlp"}, "'cosine', 'linear'"),
        ({"num_classes": 3, "prototypes": "fixed"}, "'classifier', 'learned', 'none'"),
        ({"num_classes": 3, "proj_dim": 0}, "proj_dim"),
        ({"num_classes": 3, "scale": 0.0}, "scale"),
        ({"num_classes": 3, "proj_hidden_dim": 0}, "proj_hidden_dim"),
    ],
)
def test_bad_constructor_args(encoder18, kwargs, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(")):
        BCLModel(encoder18, **kwargs)


def test_single_class_allowed_without_classifier_prototypes(encoder18):
    model = BCLModel(encoder18, num_classes=1, proj_dim=8, prototypes="learned")
    assert model(_images(2, 3, 32, 32))["prototypes"].shape == (1, 8)


def test_encoder_without_feature_dim_is_rejected():
    with pytest.raises(ValueError, match="feature_dim"):
        BCLModel(nn.Identity(), num_classes=3)


def test_build_model_passes_kwargs():
    model = build_model("resnet18", 4, small_image_stem=True, proj_dim=16, classifier="linear", prototypes="none")
    assert isinstance(model.classifier, nn.Linear) and model.prototype_head is None
    assert model.encoder.small_image_stem and model.proj_dim == 16
