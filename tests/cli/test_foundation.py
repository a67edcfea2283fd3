import dataclasses
from typing import Literal

import pytest

from pmalopti.cli import main
from pmalopti.config import ConfigError, load_config, parse_overrides, save_config
from pmalopti.errors import UserError
from pmalopti.runtime.fs import atomic_dir, check_output_dir
from pmalopti.runtime.hf import load_tokenizer


@dataclasses.dataclass
class Optim:
    lr: float = 1e-3
    """learning rate"""
    schedule: Literal["wsd", "cosine"] = "wsd"
    """LR schedule"""

    def __post_init__(self):
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")


@dataclasses.dataclass
class Cfg:
    steps: int = 10
    """number of steps"""
    name: str | None = None
    """run name"""
    optim: Optim = dataclasses.field(default_factory=Optim)
    """optimiser"""


def test_overrides_update_nested_fields_and_parse_yaml_scalars():
    cfg = load_config(Cfg, None, ["optim.lr=3e-4", "steps=20", "optim.schedule=cosine"])
    assert cfg.optim.lr == 3e-4 and cfg.steps == 20 and cfg.optim.schedule == "cosine"


def test_yaml_file_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("steps: 5\noptim:\n  lr: 0.1\n")
    cfg = load_config(Cfg, f, ["steps=7"])
    assert (cfg.steps, cfg.optim.lr, cfg.optim.schedule) == (7, 0.1, "wsd")
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(Cfg, tmp_path / "saved.yaml") == cfg


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lrr=1", "unknown config field optim.lrr"),
        ("optim.schedule=linear", "choose one of ['wsd', 'cosine']"),
        ("steps=abc", "steps: expected an integer"),
        ("optim.lr=-1", "optim.lr must be > 0"),
        ("steps", "expected KEY=VALUE"),
        ("optim.schedule=null", "choose one of"),
    ],
)
def test_bad_config_values_name_the_field(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(Cfg, None, [override])


def test_parse_overrides_builds_a_tree():
    assert parse_overrides(["a.b=1", "a.c=x", "d=[1, 2]"]) == {"a": {"b": 1, "c": "x"}, "d": [1, 2]}


def test_atomic_dir_leaves_nothing_when_the_body_fails(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "f").write_text("x")
        raise RuntimeError("boom")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_output_inside_an_input_is_refused(tmp_path):
    (tmp_path / "in").mkdir()
    with pytest.raises(UserError, match="inside"):
        check_output_dir(tmp_path / "in" / "out", force=False, inputs=[tmp_path / "in"])


def test_tiny_tokenizer_round_trips_through_save_and_load(tiny_lm, tmp_path):
    model, tok = tiny_lm
    model.config.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    text = "Knights <think> 12 + 5 = 17\n<answer>"
    loaded = load_tokenizer(tmp_path)
    assert loaded(text).input_ids == tok(text).input_ids
    assert loaded.decode(loaded(text).input_ids) == text


def test_cli_without_a_command_prints_help(capsys):
    assert main([]) == 1
    assert "pmalopti" in capsys.readouterr().out


def test_null_is_kept_for_optional_fields_and_refused_for_plain_strings():
    assert load_config(Cfg, None, ["name=null"]).name is None
    assert load_config(Cfg, None, ["name=run1"]).name == "run1"

    @dataclasses.dataclass
    class Plain:
        path: str = "x"
        """a plain string"""

    with pytest.raises(ConfigError, match="path: expected a string"):
        load_config(Plain, None, ["path=null"])
