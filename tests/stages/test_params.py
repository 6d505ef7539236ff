from __future__ import annotations

import importlib
import shutil

import pytest
import yaml

from stages import predict
from stages.cli import main as cli_main
from stages.cli.params import main
from stages.lib.params import ParamsError, compose_params, default_lake, load_params, section
from tests.conftest import ROOT


def test_committed_params_yaml_is_the_composition_of_conf(tmp_path):
    fresh = compose_params(ROOT / "conf", tmp_path / "params.yaml")
    assert (ROOT / "params.yaml").read_bytes() == fresh.read_bytes(), (
        "params.yaml is stale: run `evergreen params` and commit it"
    )


def test_overrides_select_another_model(tmp_path):
    out = compose_params(ROOT / "conf", tmp_path / "p.yaml", ["model=hgb", "seed=11"])
    params = yaml.safe_load(out.read_text())
    assert params["model"]["estimator"] == "hist_gradient_boosting" and params["seed"] == 11


def test_check_flags_a_stale_file(tmp_path, capsys):
    stale = tmp_path / "params.yaml"
    stale.write_text("seed: 1\n")
    assert main(["--conf", str(ROOT / "conf"), "--output", str(stale), "--check"]) == 1
    assert "stale" in capsys.readouterr().out
    assert main(["--conf", str(ROOT / "conf"), "--output", str(stale)]) == 0
    assert main(["--conf", str(ROOT / "conf"), "--output", str(stale), "--check"]) == 0


def test_missing_conf_and_sections_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config\.yaml"):
        compose_params(tmp_path, tmp_path / "p.yaml")
    with pytest.raises(KeyError, match=r"lake\.path"):
        section({"lake": {}}, "lake.path")


def test_lake_location_cli_wins_over_params(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("lake:\n  path: s3://bucket/shop\n")
    assert default_lake(None, params) == "s3://bucket/shop"
    assert default_lake("/data/lake", params) == "/data/lake"
    assert default_lake(None, tmp_path / "absent.yaml") == "lake"


def test_cli_lists_commands_and_rejects_unknown(capsys):
    assert cli_main(["--help"]) == 0
    assert "lake simulate" in capsys.readouterr().out
    assert cli_main(["frobnicate"]) == 2


HUGE = "1" * 100_000


def one_line(err: str) -> str:
    assert err.count("\n") == 1 and "Traceback" not in err, err[:2000]
    assert len(err) < 600, err[:600]
    return err


def test_yaml_syntax_error_in_conf_is_one_line_naming_file_and_line(tmp_path, capsys):
    conf = shutil.copytree(ROOT / "conf", tmp_path / "conf")
    lines = (conf / "model" / "logreg.yaml").read_text().splitlines()
    lines.insert(2, "oops: [1, 2")
    (conf / "model" / "logreg.yaml").write_text("\n".join(lines) + "\n")
    for check in ([], ["--check"]):
        assert main(["--conf", str(conf), "--output", str(tmp_path / "p.yaml"), *check]) == 2
        err = one_line(capsys.readouterr().err)
        assert err.startswith(f"evergreen params: {conf}/model/logreg.yaml, line ")
        assert "not valid YAML (while parsing a flow sequence from line 3: expected ','" in err
    assert not (tmp_path / "p.yaml").exists()


def test_yaml_syntax_error_in_params_yaml_is_named(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text("evaluate:\n  threshold: 0.5\n bad indent: 1\n")
    with pytest.raises(ParamsError, match=r"params\.yaml, line 3: not valid YAML \("):
        load_params(params)
    # a stage reading it says so in one line (predict reads params first)
    missing = [str(tmp_path / name) for name in ("m.onnx", "card", "s", "p", "t", "out")]
    assert predict.main([*missing, "--params", str(params)]) == 2
    err = one_line(capsys.readouterr().err)
    assert err.startswith(f"predict: {params}, line 3: not valid YAML (")
    params.write_text(f"seed: {HUGE}\n")
    with pytest.raises(ParamsError, match=r"params\.yaml: Exceeds the limit \(4300 digits\)"):
        load_params(params)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (f"train.n_trials={HUGE}", "override train.n_trials=1111"),
        ("train.n_trials==2", "override train.n_trials==2: extraneous input '='"),
        ("train.no_such_key=2", "cannot compose with ['train.no_such_key=2']: Could not override"),
        ("model=nope", "cannot compose with ['model=nope']: In 'config': Could not find"),
    ],
)
def test_bad_override_is_one_line_naming_it(tmp_path, capsys, override, message):
    out = tmp_path / "p.yaml"
    assert main(["--conf", str(ROOT / "conf"), "--output", str(out), override]) == 2
    err = one_line(capsys.readouterr().err)
    assert err.startswith("evergreen params: ") and message in err
    assert not out.exists()
    if override.endswith(HUGE):
        assert "(100015 characters): Exceeds the limit (4300 digits)" in err


@pytest.mark.parametrize(
    "stage", ["validate", "profiles", "prepare", "features", "split", "drift", "train", "evaluate"]
)
def test_every_stage_names_a_broken_params_file_in_one_line(tmp_path, stage, capsys) -> None:
    bad = tmp_path / "params.yaml"
    bad.write_text("seed: 7\nsplit: [1, 2\n")
    # the stage's own command line from dvc.yaml, its paths moved under tmp_path
    cmd = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]["cmd"].split()[3:]
    argv = [a if a.startswith("--") else str(tmp_path / a) for a in cmd]
    main = importlib.import_module(f"stages.{stage}").main
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--params", str(bad)])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{stage}: {bad}, line 3: not valid YAML (") and err.count("\n") == 1
