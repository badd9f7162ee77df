"""Config fuzzing: whatever goes into the loader, the only exception out is ConfigError with a one-line message."""

import math

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emae.config import Config, all_keys, config_from_dict, load_config, parse_override
from emae.errors import ConfigError

KEYS = all_keys()
SECTIONS = sorted({k.split(".")[0] for k in KEYS if "." in k})
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-(2**80), 2**80), st.floats(allow_nan=True),
    st.sampled_from([0, 1, -1, 2**31, 2**63, 1e308, math.inf, -math.inf, math.nan, 0.75, 0.5, 4, 16, 32]),
    st.text(max_size=12), st.sampled_from(["fp16", "cpu", "cuda", "vit_tiny", "emae", "parallel", "l1", "", "\0"]),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                           max_size=3), max_leaves=8)
keys = st.one_of(st.sampled_from(KEYS), st.sampled_from(SECTIONS), st.text(max_size=15))


def nested(pairs: list) -> dict:
    """Dotted keys -> the nested mapping a YAML recipe would hold (a clash keeps the later scalar)."""
    out: dict = {}
    for key, value in pairs:
        node, parts = out, key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {}) if isinstance(node.get(p, {}), dict) else node
        node[parts[-1]] = value
    return out


def only_config_errors(call) -> None:
    try:
        cfg = call()
    except ConfigError as e:
        msg = str(e)
        assert msg and "\n" not in msg and len(msg) < 400, repr(msg)
        return
    assert isinstance(cfg, Config)
    assert config_from_dict(cfg.to_dict()) == cfg  # what is accepted round-trips (a NaN would not)
    for v in leaves(cfg.to_dict()):  # and is a usable number
        assert not isinstance(v, float) or math.isfinite(v), v
        assert not isinstance(v, int) or abs(v) < 2**31, v


def leaves(obj):
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, list):
        return [x for item in obj for x in leaves(item)]
    return [obj]


@FUZZ
@given(st.lists(st.tuples(keys, values), max_size=5))
def test_fuzzed_dicts(pairs):
    only_config_errors(lambda: config_from_dict(nested(pairs)))


@settings(FUZZ, max_examples=300)
@given(st.sampled_from(KEYS), st.one_of(scalars, values))
def test_fuzzed_single_keys(key, value):
    only_config_errors(lambda: config_from_dict(nested([(key, value)])))


@FUZZ
@given(st.one_of(values, st.dictionaries(st.sampled_from(SECTIONS), values, max_size=3)))
def test_fuzzed_whole_documents(doc):
    only_config_errors(lambda: config_from_dict(doc))


@FUZZ
@given(st.lists(st.one_of(st.tuples(keys, values).map(lambda kv: f"{kv[0]}={yaml.safe_dump(kv[1]).strip()}"),
                          st.text(max_size=30)), max_size=4))
def test_fuzzed_overrides(texts):
    only_config_errors(lambda: load_config(None, texts))
    for text in texts:
        try:
            parse_override(text)
        except ConfigError as e:
            assert "key=value" in str(e)


@FUZZ
@given(st.one_of(st.text(max_size=80), st.binary(max_size=80),
                 st.lists(st.tuples(keys, values), max_size=4).map(lambda p: yaml.safe_dump(nested(p)))))
def test_fuzzed_yaml_files(tmp_path_factory, content):
    f = tmp_path_factory.mktemp("yaml") / "recipe.yaml"
    f.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))
    only_config_errors(lambda: load_config(str(f)))


@pytest.mark.parametrize("override,message", [
    ("train.lr=.nan", "train.lr: nan is not allowed; values must be finite numbers"),
    ("model.mlp_ratio=.inf", "model.mlp_ratio: inf is not allowed; values must be finite numbers"),
    ("train.epochs=99999999999", "train.epochs: 99999999999 is not allowed; integers must lie within ±2147483647"),
    ("train.seed=-1", "train.seed: -1 is not allowed; must be in [0, 2147483647]"),
    ("train.max_bad_steps=0", "train.max_bad_steps: 0 is not allowed; must be a positive integer"),
    ("model.num_heads=5", "model.num_heads: 5 is not allowed; must divide the encoder width 192"),
    ("model.decoder_num_heads=3", "model.decoder_num_heads: 3 is not allowed; must divide model.decoder_embed_dim 128"),
    ("data.path=2001-13-45", None),  # PyYAML raises ValueError on this date: taken as the text
])
def test_range_checks_found_by_fuzzing(override, message):
    if message is None:
        assert load_config(None, [override]).data.path == "2001-13-45"
        return
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert str(e.value) == message


def test_bad_yaml_and_unreadable_files(tmp_path):
    f = tmp_path / "r.yaml"
    for text, message in [(b"a: [1, 2", "not valid YAML"), (b"\xff\xfe\x00", "not valid YAML"),
                          (b"- 1\n- 2\n", "config: expected a mapping"), (b"[" * 2000, "not valid YAML")]:
        f.write_bytes(text)
        with pytest.raises(ConfigError, match=message):
            load_config(str(f))
