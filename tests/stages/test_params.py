from __future__ import annotations

import pytest
import yaml

from stages.cli import main as cli_main
from stages.cli.params import main
from stages.lib.params import compose_params, default_lake, section
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
