"""Every shipped config loads and validates; overrides are typed; unknown keys and bad values fail."""

from __future__ import annotations

from pathlib import Path

import pytest

from bcl.config import (
    ConfigError,
    LinearConfig,
    SupConConfig,
    config_from_dict,
    config_to_dict,
    config_to_yaml,
    load_config,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
STAGE1 = {"main_supcon", "mvtec_bcl", "mvtec_supcon", "cifar10lt_bcl"}


def schema_for(path: Path):
    return SupConConfig if path.stem in STAGE1 else LinearConfig


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path, monkeypatch):
    monkeypatch.setenv("BCL_MVTEC_ROOT", "/data/mvtec_ad/transistor")
    cfg = load_config(schema_for(path), path)
    if cfg.data.dataset == "mvtec":
        assert cfg.data.root == "/data/mvtec_ad/transistor"  # interpolated from the environment
    shorter = ["optim.epochs=1"] + (["optim.warmup_epochs=0", "optim.decay_epochs=[0]"] if cfg.optim.schedule == "step"
                                    else [])
    assert load_config(schema_for(path), path, shorter).optim.epochs == 1


def test_shipped_configs_cover_the_suite():
    names = {p.stem for p in CONFIGS.glob("*.yaml")}
    assert {"main_supcon", "main_linear", "mvtec_bcl", "mvtec_supcon", "mvtec_linear", "mvtec_ce",
            "mvtec_ce_classaware", "mvtec_ce_logitadjusted"} <= names
    assert len([n for n in names if n.startswith("coursework_")]) == 5


def test_mvtec_configs_without_root_leave_it_unset(monkeypatch):
    monkeypatch.delenv("BCL_MVTEC_ROOT", raising=False)
    assert load_config(SupConConfig, CONFIGS / "mvtec_bcl.yaml").data.root is None


def test_overrides_are_typed():
    cfg = load_config(SupConConfig, overrides=["optim.lr=0.2", "data.image_size=48", "run.tensorboard=false",
                                               "data.crop_scale=[0.3,0.9]", "run.name=exp1"])
    assert cfg.optim.lr == 0.2 and isinstance(cfg.optim.lr, float)
    assert cfg.data.image_size == 48 and cfg.run.tensorboard is False
    assert cfg.data.crop_scale == [0.3, 0.9] and cfg.run.name == "exp1"


@pytest.mark.parametrize(
    "override, match",
    [
        ("optim.epochz=3", r"unknown config key 'optim.epochz'; valid keys in 'optim': "
                           r"backbone_lr_scale, batch_size, decay_epochs, decay_factor, epochs"),
        ("bogus=1", r"unknown config key 'bogus'; valid keys in the top level: data, eval"),
        ("optim.epochs=ten", r"bad value for 'optim.epochs'"),
        ("run.tensorboard=maybe", r"bad value for 'run.tensorboard'"),
        ("data.dataset=imagenet", r"data.dataset must be one of \['synthetic', 'mvtec', 'folder'\]"),
        ("loss.temperature=0", r"loss.temperature must be > 0"),
        ("sampler.q=2", r"sampler.q must be in \[0, 1\]"),
        ("data.fold=7", r"data.fold must be in \[0, data.n_folds=5\)"),
        ("optim.epochs", r"must look like section.key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(SupConConfig, overrides=[override])


def test_bad_files_name_the_file(tmp_path):
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("optim:\n  lr: 0.1\n  learning_rate: 0.2\n")
    with pytest.raises(ConfigError, match=r"unknown.yaml.*unknown config key 'optim.learning_rate'"):
        load_config(SupConConfig, unknown)
    wrong_type = tmp_path / "wrong.yaml"
    wrong_type.write_text("data:\n  image_size: big\n")
    with pytest.raises(ConfigError, match=r"wrong.yaml.*'data.image_size'"):
        load_config(SupConConfig, wrong_type)
    broken = tmp_path / "broken.yaml"
    broken.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken.yaml.*not valid YAML"):
        load_config(SupConConfig, broken)
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_config(SupConConfig, tmp_path / "missing.yaml")


def test_cross_field_checks():
    with pytest.raises(ConfigError, match="loss.name=supcon is plain SupCon, which has no prototypes"):
        load_config(SupConConfig, overrides=["loss.name=supcon"])
    with pytest.raises(ConfigError, match="loss.mode=contrastive trains no classifier"):
        load_config(SupConConfig, overrides=["loss.mode=contrastive"])


def test_round_trips_through_dict_and_yaml(tmp_path):
    cfg = load_config(LinearConfig, overrides=["loss.name=focal", "model.finetune=true"])
    assert config_from_dict(LinearConfig, config_to_dict(cfg)) == cfg
    saved = tmp_path / "config.yaml"
    saved.write_text(config_to_yaml(cfg))
    assert load_config(LinearConfig, saved) == cfg
