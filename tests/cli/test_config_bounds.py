"""Bounds declared once on config fields; YAML limits; one-line errors at the CLI boundary."""

from __future__ import annotations

import dataclasses

import pytest

from pmalopti.cli import main
from pmalopti.config import SEED, ConfigError, bounded, check_bounds, load_config


@dataclasses.dataclass
class Optim:
    lr: float = bounded(1e-3, gt=0)
    """learning rate"""
    betas: tuple[float, ...] = bounded((0.9, 0.99), ge=0, lt=1, length=2)
    """AdamW betas"""
    temperature: float = bounded(1.0, gt=0)
    """sampling temperature"""


@dataclasses.dataclass
class Cfg:
    seed: int = bounded(0, **SEED)
    """seed"""
    steps: int = bounded(10, ge=1)
    """steps"""
    optim: Optim = dataclasses.field(default_factory=Optim)
    """optimiser"""
    kwargs: dict = dataclasses.field(default_factory=dict)
    """free-form options"""


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lr=0", "optim.lr must be > 0, got 0.0"),
        ("optim.lr=-1e-3", "optim.lr must be > 0"),
        ("optim.lr=inf", "optim.lr: must be a finite number"),
        ("optim.lr=.nan", "optim.lr: must be a finite number"),
        ("optim.lr=1e400", "optim.lr: must be a finite number"),
        ("optim.temperature=0", "optim.temperature must be > 0"),
        ("optim.betas=[0.9, 1.0]", r"optim.betas must be in [0, 1)"),
        ("optim.betas=[0.9]", "optim.betas must have 2 values, got 1"),
        ("optim.betas=[0.9, 0.9, 0.9]", "optim.betas must have 2 values, got 3"),
        ("seed=-1", "seed must be in [0, 4294967296)"),
        ("seed=4294967296", "seed must be in [0, 4294967296)"),
        ("steps=0", "steps must be >= 1"),
        ("steps=1e400", "steps: expected an integer"),
        ("steps=99999999999999999999999", "too large for a 64-bit integer"),
        ("steps=1.5", "steps: expected an integer"),
    ],
)
def test_out_of_bounds_values_are_refused_naming_the_field(override, message):
    with pytest.raises(ConfigError) as exc:
        load_config(Cfg, None, [override])
    assert message in str(exc.value)


@pytest.mark.parametrize(
    "override", ["optim.lr=3e-4", "seed=4294967295", "optim.betas=[0, 0.999]", "steps=1"]
)
def test_values_on_the_edge_of_their_bounds_are_accepted(override):
    load_config(Cfg, None, [override])


def test_check_bounds_checks_a_config_built_in_python():
    cfg = dataclasses.replace(Cfg(), optim=Optim(lr=-1.0))
    with pytest.raises(ConfigError, match=r"optim\.lr must be > 0"):
        check_bounds(cfg)


ALIAS_BOMB = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
"""


def test_a_yaml_alias_bomb_is_refused_naming_the_file(tmp_path):
    f = tmp_path / "bomb.yaml"
    f.write_text("kwargs:\n" + "".join("  " + line + "\n" for line in ALIAS_BOMB.splitlines()))
    assert f.stat().st_size < 600
    with pytest.raises(ConfigError, match=r"bomb\.yaml: expands to more than"):
        load_config(Cfg, f)


def test_a_self_referencing_yaml_document_is_refused(tmp_path):
    f = tmp_path / "loop.yaml"
    f.write_text("kwargs: &x {a: *x}\n")
    with pytest.raises(ConfigError, match=r"loop\.yaml"):
        load_config(Cfg, f)


def test_an_alias_bomb_in_set_is_refused():
    with pytest.raises(ConfigError, match="expands to more than"):
        load_config(Cfg, None, ["kwargs={" + ALIAS_BOMB.replace("\n", ", ")[:-2] + "}"])


def test_a_huge_yaml_file_is_refused_before_it_is_read(tmp_path):
    f = tmp_path / "big.yaml"
    f.write_text("steps: 1\n" + "#" * (2 << 20))
    with pytest.raises(ConfigError, match=r"big\.yaml: larger than"):
        load_config(Cfg, f)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("steps: [1\n", r"bad\.yaml is not valid YAML \(line 2"),
        ("- 1\n- 2\n", "expected a mapping at the top level"),
        ("!!python/object:os.system {}\n", "bad.yaml is not valid YAML"),
        ("[" * 5000 + "]" * 5000, "bad.yaml"),
    ],
)
def test_bad_yaml_files_are_one_clear_error_naming_the_file(tmp_path, text, message):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(Cfg, f)


# --- the CLI boundary: one line, exit 2 --------------------------------------------------------


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["pretrain", "-o", "{tmp}/r", "--set", "optim.lr=inf"], "optim.lr"),
        (["pretrain", "-o", "{tmp}/r", "--set", "train.threads=100000"], "train.threads"),
        (["pretrain", "-o", "{tmp}/r", "--set", "seed=-5"], "seed"),
        (["sft", "-o", "{tmp}/r", "--set", "optim.beta2=1"], "optim.beta2"),
        (["grpo", "-o", "{tmp}/r", "--set", "rollout.temperature=0"], "rollout.temperature"),
        (["grpo", "-o", "{tmp}/r", "--set", "optim.betas=[0.9]"], "optim.betas"),
        (["grpo", "-o", "{tmp}/r", "--set", "seed=4294967296"], "seed"),
        (["pretrain", "-o", "{tmp}/r", "--config", "{tmp}/missing.yaml"], "missing.yaml"),
        (["demo", "--smoke", "-o", "{tmp}/r", "--set", "ar_alpha=2"], "ar_alpha"),
    ],
)
def test_config_errors_end_in_one_line_and_nothing_is_written(tmp_path, capsys, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    assert message in _one_line_error(capsys)
    assert not (tmp_path / "r").exists()


def test_a_yaml_bomb_config_file_is_one_line_naming_the_file(tmp_path, capsys):
    f = tmp_path / "bomb.yaml"
    f.write_text("task:\n  kwargs:\n" + "".join(f"    {x}\n" for x in ALIAS_BOMB.splitlines()))
    assert main(["grpo", "--config", str(f), "-o", str(tmp_path / "r")]) == 2
    assert "bomb.yaml" in _one_line_error(capsys)
    assert not (tmp_path / "r").exists()


def test_os_errors_name_the_file(tmp_path, capsys):
    d = tmp_path / "adir.yaml"
    d.mkdir()
    assert main(["pretrain", "-o", str(tmp_path / "r"), "--config", str(d)]) == 2
    assert "adir.yaml" in _one_line_error(capsys)


def test_a_permission_error_is_one_line_naming_the_path(tmp_path, capsys, monkeypatch):
    def deny(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "locked"))

    from pmalopti import cli

    parser = cli.build_parser()
    args = parser.parse_args(["pretrain", "-o", str(tmp_path / "r")])
    args.func = deny
    monkeypatch.setattr(cli, "build_parser", lambda: _Fixed(parser, args))
    assert cli.main(["pretrain"]) == 2
    err = _one_line_error(capsys)
    assert "locked: Permission denied" in err


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    from pmalopti import cli

    parser = cli.build_parser()
    args = parser.parse_args(["pretrain", "-o", str(tmp_path / "r")])

    def bug(_):
        raise KeyError("internal")

    args.func = bug
    monkeypatch.setattr(cli, "build_parser", lambda: _Fixed(parser, args))
    with pytest.raises(KeyError):
        cli.main(["pretrain"])


def test_ctrl_c_exits_130(tmp_path, monkeypatch, capsys):
    from pmalopti import cli

    parser = cli.build_parser()
    args = parser.parse_args(["pretrain", "-o", str(tmp_path / "r")])

    def interrupted(_):
        raise KeyboardInterrupt

    args.func = interrupted
    monkeypatch.setattr(cli, "build_parser", lambda: _Fixed(parser, args))
    assert cli.main(["pretrain"]) == 130


class _Fixed:
    """A parser that returns prepared args (to inject an error into a command)."""

    def __init__(self, parser, args):
        self.parser, self.args = parser, args

    def parse_args(self, argv):
        return self.args

    def print_help(self):
        self.parser.print_help()
