"""`evergreen new DATASET`: a clone of the demo starts clean for another dataset (a real git
clone of this repository, a real `dvc`)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from stages.cli.ingest import main as ingest_main
from stages.cli.new import main, set_dataset, set_lake
from stages.cli.params import main as params_main
from tests.conftest import ROOT

CONFIG = "conf/config.yaml"


def put(path: Path, content: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


@pytest.fixture
def clone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A clone of this repository (the demo's committed state: metrics, plots, card, gate
    verdict, monitoring history, dvc.lock, data.dvc) with this tree's conf/, after a demo run
    left its data, outputs and served log in the workspace."""
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    repo = tmp_path / "repo"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
    shutil.rmtree(repo / "conf")
    shutil.copytree(ROOT / "conf", repo / "conf")
    for name in ("params.yaml", "dvc.yaml", ".gitignore"):
        shutil.copy(ROOT / name, repo / name)
    put(repo / "data/landing/events/date=2026-04-30/part-0.parquet")
    put(repo / "data/ingest-manifest.json", b"{}")
    put(repo / "artifacts/validate/events/date=2026-04-30.parquet")
    put(repo / "artifacts/.validate.stat-cache.json", b"{}")
    put(repo / "models/model.skops")
    put(repo / "reports/report.html")
    put(repo / "logs/predictions/part-0.jsonl")
    monkeypatch.chdir(repo)
    return repo


def tracked_state(repo: Path) -> set[str]:
    listed = subprocess.run(
        ["git", "ls-files", "metrics", "plots", "models", "reports", "data.dvc", "dvc.lock"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return {p for p in listed if (repo / p).exists()}


def test_a_clone_starts_clean_for_another_dataset(
    clone: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "metrics/monitor_history.csv" in tracked_state(clone)  # the shop's, as committed
    lake = tmp_path / "bank-lake"
    config_before = (clone / CONFIG).read_text()

    assert main(["bank", "--lake", str(lake)]) == 0
    out = capsys.readouterr().out
    assert f"{CONFIG}: dataset bank, lake.path {lake}" in out and "params.yaml: recomposed" in out
    for removed in (
        "data.dvc",
        "dvc.lock",
        "data/landing/ (1 file)",
        "data/ingest-manifest.json",
        "artifacts/validate/ (1 file)",
        "artifacts/.validate.stat-cache.json",
        "metrics/gate.json",
        "metrics/monitor_history.csv",
        "plots/roc.json",
        "models/model_card.json",
        "models/model.skops",
        "reports/report.html",
        "logs/predictions/ (1 file)",
    ):
        assert f"  {removed}\n" in out, removed
    # only DVC's .gitignore files are left of the state: nothing of the shop
    assert tracked_state(clone) == {"models/.gitignore", "reports/.gitignore"}
    assert not (clone / "data").exists() and not (clone / "logs/predictions").exists()
    assert sorted(p.name for p in (clone / "artifacts").iterdir()) == [".gitignore"]
    # conf/ names the dataset and the lake, its comments kept; params.yaml is its composition
    config = (clone / CONFIG).read_text()
    assert "  - dataset: bank\n" in config and f"  path: {lake}\n" in config
    assert config.replace("dataset: bank", "dataset: shop").replace(str(lake), "lake") == (
        config_before
    )
    params = yaml.safe_load((clone / "params.yaml").read_text())
    assert params["dataset"]["name"] == "bank" and params["lake"]["path"] == str(lake)
    assert params_main(["--check"]) == 0
    capsys.readouterr()

    # idempotent: nothing more to do
    assert main(["bank"]) == 0
    out = capsys.readouterr().out
    assert "nothing to remove" in out and "recomposed" not in out and CONFIG not in out
    assert (clone / CONFIG).read_text() == config

    # the first ingest records the new lake's objects only (a real `dvc add`)
    put(lake / "landing/calls/date=2026-01-01/part-0.parquet", b"calls")
    assert ingest_main([]) == 0
    data_dvc = yaml.safe_load((clone / "data.dvc").read_text())
    assert data_dvc["outs"][0]["nfiles"] == 2  # the object + the ingest manifest
    assert sorted(p.name for p in (clone / "data/landing").iterdir()) == ["calls"]


def test_an_unknown_dataset_is_refused_and_nothing_changes(
    clone: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, params = (clone / CONFIG).read_bytes(), (clone / "params.yaml").read_bytes()
    assert main(["nope"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "conf/dataset/nope.yaml: no such dataset config" in err and "bank" in err
    assert (clone / CONFIG).read_bytes() == config
    assert (clone / "params.yaml").read_bytes() == params
    assert (clone / "data/landing").is_dir() and (clone / "dvc.lock").is_file()


def test_a_dataset_config_that_does_not_compose_leaves_conf_as_it_was(
    clone: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, params = (clone / CONFIG).read_bytes(), (clone / "params.yaml").read_bytes()
    put(clone / "conf/dataset/broken.yaml", b"name: broken\ntables: [unclosed\n")
    assert main(["broken"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "broken.yaml" in err
    assert (clone / CONFIG).read_bytes() == config
    assert (clone / "params.yaml").read_bytes() == params
    assert (clone / "dvc.lock").is_file()


def test_a_dataset_config_the_check_refuses_removes_nothing(
    clone: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It composes, but an entities table lacks its timestamp: `evergreen params --check`
    would refuse it, so the previous dataset's state stays (it was removed first)."""
    config, params = (clone / CONFIG).read_bytes(), (clone / "params.yaml").read_bytes()
    raw = yaml.safe_load((ROOT / "conf/dataset/shop.yaml").read_text())
    raw["name"] = "nostamp"
    raw["tables"]["customers"].pop("timestamp")
    put(clone / "conf/dataset/nostamp.yaml", yaml.safe_dump(raw).encode())
    assert main(["nostamp"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "timestamp" in err
    assert (clone / CONFIG).read_bytes() == config
    assert (clone / "params.yaml").read_bytes() == params
    assert (clone / "data/landing").is_dir() and (clone / "dvc.lock").is_file()


def test_config_edits_keep_everything_else() -> None:
    config = (
        "defaults:\n  - model: logreg\n  - dataset: shop  # the demo\n  - _self_\n\n"
        "lake:\n  # where\n  path: lake  # a folder\n\nengine:\n  path: other\n"
    )
    edited = set_lake(set_dataset(config, "bank", "c.yaml"), "s3://b/p", "c.yaml")
    assert edited == config.replace("shop", "bank").replace("path: lake", "path: s3://b/p")
    assert "path: 'my lake''s'" in set_lake(config, "my lake's", "c.yaml")
    with pytest.raises(ValueError, match=r"c\.yaml: expected a `lake:` section"):
        set_lake("lake:\n  other: 1\nengine:\n  path: x\n", "l", "c.yaml")
    with pytest.raises(ValueError, match=r"c\.yaml: expected one `- dataset: <name>` line"):
        set_dataset("defaults:\n  - model: logreg\n", "bank", "c.yaml")
