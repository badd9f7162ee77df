"""Config loading: recipes, overrides, one-line errors for unknown keys and bad values."""

import functools

import pytest

from emae.config import Config, all_keys, load_config, resolve_recipe
from emae.errors import ConfigError


def test_defaults_recipes_and_overrides(tmp_path):
    assert load_config().train.epochs == Config().train.epochs
    cfg = load_config("mae_vit_base_p16_in1k", ["train.epochs=3", "model.img_size=[224,160]"], **{"data.path": "x"})
    assert (cfg.model.arch, cfg.train.epochs, cfg.model.image_size, cfg.data.path) == ("vit_base", 3, (224, 160), "x")
    assert cfg.train.base_lr == 1.5e-4 and cfg.train.betas == [0.9, 0.95] and cfg.train.warmup_epochs == 40
    f = tmp_path / "r.yaml"
    f.write_text("train:\n  epochs: 7\n")
    assert load_config(str(f)).train.epochs == 7
    assert resolve_recipe("mae_vit_tiny_p4_cifar10.yaml").is_file()


@pytest.mark.parametrize("override,message", [
    ("train.epoch=3", "unknown config key 'train.epoch'; did you mean 'train.epochs'?"),
    ("epochs=3", "did you mean 'train.epochs'?"),
    ("model.patchsize=8", "did you mean 'model.patch_size'?"),
    ("train.epochs=abc", "train.epochs: 'abc' is not a int"),
    ("train.epochs=0", "train.epochs: 0 is not allowed; must be a positive integer"),
    ("mask.ratio=1.2", "mask.ratio: 1.2 is not allowed; must be in (0, 1)"),
    ("mask.ratio=0", "mask.ratio: 0.0 is not allowed"),
    ("model.img_size=30", "model.img_size: 30x30 is not divisible by model.patch_size 4"),
    ("train.precision=fp8", "train.precision: 'fp8' is not allowed"),
    ("model.arch=vit_giant", "model.arch: 'vit_giant' is not allowed"),
    ("data.mean=[0.5]", "data.mean: [0.5] is not allowed; need one value per channel (3)"),
    ("novalue", "is not of the form key=value"),
])
def test_bad_overrides_are_one_line(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_key_in_file_and_missing_file(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("model:\n  decoder_dept: 3\n")
    with pytest.raises(ConfigError, match="did you mean 'model.decoder_depth'"):
        load_config(str(f))
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "missing.yaml"))
    f.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(f))


def get(cfg, key):
    return functools.reduce(getattr, key.split("."), cfg)


def test_every_key_is_overridable():
    for key in all_keys():
        value = get(load_config(), key)
        text = "null" if value is None else str(value).replace("'", "")
        assert get(load_config(None, [f"{key}={text}"]), key) == value, key


def test_exponent_floats_without_a_dot():
    assert load_config(None, ["train.lr=1e-3", "train.base_lr=5e-4"]).train.lr == 1e-3
    with pytest.raises(ConfigError, match="train.lr: 'fast' is not a float"):
        load_config(None, ["train.lr=fast"])
