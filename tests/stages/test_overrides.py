from __future__ import annotations

import shutil

import pytest
import yaml

from stages.cli.overrides import OverrideError, apply_overrides, main, parse_overrides
from stages.lib.params import compose_params
from tests.conftest import ROOT


@pytest.fixture
def conf(tmp_path):
    return shutil.copytree(ROOT / "conf", tmp_path / "conf")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("model", "expected key=value"),
        ("model=hgb;rm -rf /", "value may only contain"),
        ("seed=$(id)", "value may only contain"),
        ("train.n_trials=`x`", "value may only contain"),
        ("a..b=1", "dotted name"),
    ],
)
def test_unsafe_or_malformed_overrides_are_refused(raw, message):
    with pytest.raises(OverrideError, match=message):
        parse_overrides([raw])


def test_several_overrides_in_one_string():
    assert [str(o) for o in parse_overrides(["model=hgb  seed=3"])] == ["model=hgb", "seed=3"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model=xgboost", "model must be one of"),
        ("evaluate.no_such_key=1", "no key 'evaluate.no_such_key'"),
        ("evaluate=3", "is a section"),
        ("evaluate.threshold=high", "expected a float"),
        ("seed=true", "expected a int"),
    ],
)
def test_overrides_must_name_existing_keys_with_right_kind(conf, override, message):
    with pytest.raises(OverrideError, match=message):
        apply_overrides(conf, parse_overrides([override]))


def test_apply_writes_group_choice_and_values_into_conf(conf, tmp_path):
    before = (conf / "config.yaml").read_text()
    changed = apply_overrides(
        conf, parse_overrides(["model=hgb", "seed=11", "model.hyperparameters.max_iter=99"])
    )
    assert {p.name for p in changed} == {"config.yaml", "hgb.yaml"}
    params = yaml.safe_load(compose_params(conf, tmp_path / "p.yaml").read_text())
    assert params["model"]["name"] == "hgb" and params["seed"] == 11
    assert params["model"]["hyperparameters"]["max_iter"] == 99
    after = (conf / "config.yaml").read_text()
    # comments survive: the change is a reviewable diff, not a rewrite
    assert [line for line in before.splitlines() if line.lstrip().startswith("#")] == [
        line for line in after.splitlines() if line.lstrip().startswith("#")
    ]


def test_main_check_and_apply_from_environment(conf, monkeypatch, capsys):
    monkeypatch.setenv("OVERRIDES", "model=hgb")
    assert main(["check", "--from-env", "OVERRIDES", "--conf", str(conf)]) == 0
    assert "model=hgb" in capsys.readouterr().out
    monkeypatch.setenv("OVERRIDES", "model=hgb;id")
    before = (conf / "config.yaml").read_bytes()
    assert main(["apply", "--from-env", "OVERRIDES", "--conf", str(conf)]) == 2
    assert "value may only contain" in capsys.readouterr().err
    assert (conf / "config.yaml").read_bytes() == before  # nothing written
