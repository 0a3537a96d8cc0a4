"""Config loading: LLMC schema, typed overrides, and one-line errors that name the key."""

import textwrap

import pytest

from llmc.config import Config, dump_config, load_config, parse_overrides
from llmc.errors import ConfigError

GOOD = textwrap.dedent("""
    base:
        seed: &seed 7
    model:
        type: SmolLM
        path: smollm2-135m-instruct
        torch_dtype: float32
    eval:
        eval_pos: [pretrain]
        name: wikitext2
        seq_len: 512
        bs: 2
    save:
        save_path: /tmp/somewhere
""")


@pytest.fixture
def good(tmp_path):
    p = tmp_path / "good.yml"
    p.write_text(GOOD)
    return p


def test_good_config_is_typed(good):
    cfg = load_config(good)
    assert isinstance(cfg, Config)
    assert cfg.base.seed == 7 and cfg.model.type == "SmolLM" and cfg.model.torch_dtype == "float32"
    assert cfg.eval.name == ["wikitext2"]  # a single name becomes a list
    assert cfg.eval.seq_len == 512 and cfg.eval.bs == 2
    assert cfg.quant is None and cfg.calib is None


def test_defaults_without_file():
    cfg = load_config(None)
    assert cfg.model.path == "smollm2-135m-instruct" and cfg.eval.seq_len == 2048


def test_overrides_are_typed_by_the_schema(good):
    cfg = load_config(good, ["--eval.limit", "200", "--eval.name", "wikitext2", "--model.path=123",
                             "--eval.download", "true", "--base.seed", "3"])
    assert cfg.eval.limit == 200 and isinstance(cfg.eval.limit, int)
    assert cfg.model.path == "123" and isinstance(cfg.model.path, str)  # string key stays a string
    assert cfg.eval.download is True and cfg.base.seed == 3


@pytest.mark.parametrize("overrides, message", [
    (["--eval.bogus", "1"], "eval.bogus: unknown key"),
    (["--eval.seq_lne", "1"], "did you mean 'seq_len'"),
    (["--modle.path", "x"], "modle: unknown key (did you mean 'model'?)"),
    (["--eval.seq_len", "abc"], "eval.seq_len: 'abc' is not an integer"),
    (["--eval.seq_len", "0"], "eval.seq_len: must be a positive integer"),
    (["--model.torch_dtype", "float8"], "model.torch_dtype: 'float8' is not one of"),
    (["--eval.eval_pos", "fake_quant"], "needs a quant section"),
    (["--eval.name", "wikitext3"], "eval.name: no evaluator for 'wikitext3' (available: "),
    (["--eval.name", "wikitext2,arc_eazy"], "no evaluator for 'arc_eazy' (available: arc_challenge, arc_easy, "),
    (["--eval.name", "arc_eazy"], "(did you mean 'arc_easy'?)"),
])
def test_bad_values_name_the_key(good, overrides, message):
    with pytest.raises(ConfigError) as e:
        load_config(good, overrides)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_misspelt_granularity_names_key_and_choices(tmp_path):
    p = tmp_path / "q.yml"
    p.write_text("quant:\n  method: RTN\n  weight: {bit: 4, granularity: per_chanel}\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert msg.startswith("quant.weight.granularity: 'per_chanel' is not one of")
    assert "did you mean 'per_channel'" in msg


def test_missing_config_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yml")
    bad = tmp_path / "bad.yml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_parse_overrides_nesting_and_errors():
    assert parse_overrides(["--a.b.c", "1", "--a.d=x"]) == {"a": {"b": {"c": 1}, "d": "x"}}
    with pytest.raises(ConfigError, match="missing value"):
        parse_overrides(["--a.b"])
    with pytest.raises(ConfigError, match="unexpected argument"):
        parse_overrides(["positional"])


def test_dump_roundtrip(good, tmp_path):
    cfg = load_config(good)
    again = tmp_path / "again.yml"
    again.write_text(dump_config(cfg))
    assert load_config(again).to_dict() | {"source": None} == cfg.to_dict() | {"source": None}
