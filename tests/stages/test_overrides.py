from __future__ import annotations

import shutil

import pytest
import yaml

from stages.cli import overrides
from stages.cli.overrides import (
    OverrideError,
    apply_overrides,
    main,
    parse_overrides,
    validate_overrides,
)
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


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("evaluate.threshold=2", "evaluate.threshold: 2.0 is not in [0, 1]"),
        ("train.n_trials=-5", "train.n_trials: -5 is not >= 0"),
        ("evaluate.importance_repeats=0", "evaluate.importance_repeats: 0 is not >= 1"),
        ("gate.min_roc_auc=1.5", "gate.min_roc_auc: 1.5 is not in [0, 1]"),
        ("simulate.faults.null_rate=2", "simulate.faults.null_rate: must be in [0, 1]"),
        ("monitor.confidence=1.5", "monitor.confidence: 1.5 is not in [0.5, 1)"),
        ("serve.port=80", "port: Input should be greater than or equal to 1024 (from {conf}/)"),
        ("validate.max_quarantine_fraction=7", "validate.max_quarantine_fraction: 7 is not a"),
        ("split.test_snapshots=0", "split.test_snapshots: 0 is not a whole number >= 1"),
        ("features.snapshot_every_days=0", "features.snapshot_every_days: 0 is not a whole"),
        ("features.windows=[7,0]", "features.windows: [7, 0] must be whole days >= 1"),
    ],
)
def test_out_of_range_overrides_are_refused_naming_key_and_range(conf, override, message):
    before = (conf / "config.yaml").read_bytes()
    with pytest.raises(OverrideError) as caught:
        apply_overrides(conf, parse_overrides([override]))
    assert str(caught.value).startswith(f"override {override}: ")
    assert message.format(conf=conf) in str(caught.value)
    assert (conf / "config.yaml").read_bytes() == before


def test_every_dataset_and_model_passes_the_range_checks(conf):
    for path in sorted((conf / "dataset").glob("*.yaml")):
        validate_overrides(conf, parse_overrides([f"dataset={path.stem}"]))
    # each family with a dataset whose task it fits: ridge is a regressor (bikes), the MLP a
    # classifier (shop)
    for path in sorted((conf / "model").glob("*.yaml")):
        dataset = "bikes" if path.stem == "ridge" else "shop"
        validate_overrides(conf, parse_overrides([f"dataset={dataset}", f"model={path.stem}"]))
    with pytest.raises(OverrideError, match=r"override model=ridge: model.estimator: 'ridge' is"):
        validate_overrides(conf, parse_overrides(["model=ridge"]))


def test_apply_writes_a_key_the_dataset_sets_into_the_dataset_config(conf, tmp_path):
    changed = apply_overrides(conf, parse_overrides(["dataset=bikes", "monitor.min_labelled=99"]))
    assert {p.name for p in changed} == {"config.yaml", "bikes.yaml"}
    assert "min_labelled: 99" in (conf / "dataset" / "bikes.yaml").read_text()
    params = yaml.safe_load(compose_params(conf, tmp_path / "p.yaml").read_text())
    assert params["monitor"]["min_labelled"] == 99


def test_a_huge_integer_is_one_line(conf, capsys, monkeypatch):
    huge = "1" * 100_000
    assert main(["check", "--set", f"train.n_trials={huge}", "--conf", str(conf)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) < 300, err[:300]
    assert "train.n_trials's value is 100000 characters long (at most 1000)" in err
    # without the length cap, YAML's integer-size error is named in one line too
    monkeypatch.setattr(overrides, "MAX_VALUE_CHARS", 200_000)
    assert main(["check", "--set", f"train.n_trials={huge}", "--conf", str(conf)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) < 300, err[:300]
    assert err.startswith("evergreen overrides: override train.n_trials=1111")
    assert "(100015 characters): Exceeds the limit (4300 digits)" in err


def test_broken_conf_is_one_line(conf, capsys):
    (conf / "config.yaml").write_text((conf / "config.yaml").read_text() + "x: [1\n")
    assert main(["check", "--set", "seed=3", "--conf", str(conf)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"evergreen overrides: {conf}/config.yaml, line ")
    assert "not valid YAML" in err and err.count("\n") == 1
