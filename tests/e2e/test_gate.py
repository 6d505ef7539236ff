"""The gate on a temporary git + DVC repository: a champion on main, challengers on a branch."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from stages.cli.card import main as stamp_main
from stages.cli.gate import main as gate_main
from stages.contract.card import file_md5
from stages.lib.params import compose_params
from tests.e2e.helpers import init_repo, ran_stages, run, sh

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# The gate's defaults (no absolute floors: the naive baseline, then the champion, decide). No
# tuning trials, to stay fast.
BASE = ("train.n_trials=0",)
BASELINE = ["baseline_roc_auc", "baseline_brier"]
# the weak challenger keeps only these of the schema's features
WEAK_KEEPS = ("monthly_price", "tickets_28d")


def compose(repo: Path, *overrides: str) -> None:
    """`evergreen params BASE... overrides...`, in this process."""
    compose_params(repo / "conf", repo / "params.yaml", [*BASE, *overrides])


def gate(repo: Path, *args: str) -> tuple[int, str, dict]:
    """`evergreen gate` as CI runs it."""
    done = run(repo, "evergreen", "gate", *args)
    report = json.loads((repo / "reports/gate.json").read_text())
    return done.returncode, done.stdout + done.stderr, report


def gate_here(repo: Path, monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[int, dict]:
    """The same command in this process (no interpreter start-up: the test stays fast)."""
    monkeypatch.chdir(repo)
    code = gate_main(list(args))
    return code, json.loads((repo / "reports/gate.json").read_text())


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_repo(tmp_path_factory.mktemp("gate"))


@pytest.fixture(scope="module")
def first_run(repo: Path) -> tuple[int, dict]:
    """An hgb model in a repository with no commit yet: no champion exists."""
    simulate = ("evergreen", "lake", "simulate", "--lake", "lake", "--start", "2026-01-01")
    sh(repo, *simulate, "--days", "60", "--seed", "7", "--customers", "600")
    sh(repo, "evergreen", "ingest", "--lake", "lake")
    compose(repo, "model=hgb")
    # what the card, hence the gate, needs (not the drift report)
    sh(repo, "dvc", "repro", "card")
    with pytest.MonkeyPatch.context() as monkeypatch:
        result = gate_here(repo, monkeypatch)
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-q", "-m", "champion: hgb")
    sh(repo, "dvc", "push", "-q")
    return result


def test_without_a_champion_the_gate_judges_the_naive_baseline(
    first_run: tuple[int, dict],
) -> None:
    code, report = first_run
    assert code == 0, report
    assert report["blessed"] is True
    assert report["champion"] is None
    assert "git ref 'main' not found" in report["champion_missing"]
    assert [c["name"] for c in report["checks"]] == BASELINE
    auc = report["checks"][0]
    assert auc["baseline"] == 0.5 and auc["ci_low"] > 0 and auc["confidence"] == 0.95
    assert report["bootstrap"]["seed"] == 7 and report["bootstrap"]["resamples"] == 1000


def test_a_weaker_challenger_is_not_blessed(repo: Path, first_run: tuple) -> None:
    sh(repo, "git", "checkout", "-q", "-b", "weak")
    schema = json.loads((repo / "artifacts/features/feature_schema.json").read_text())
    drop = [f for f in [*schema["numeric"], *schema["categorical"]] if f not in WEAK_KEEPS]
    compose(repo, "model=logreg", f"features.exclude=[{','.join(drop)}]")
    out = sh(repo, "dvc", "repro", "card")
    # features.exclude narrows the schema; the frames, hence the split, stay as they were
    assert {"features", "train", "evaluate", "card"} <= ran_stages(out)
    assert "split" not in ran_stages(out)

    code, printed, report = gate(repo)
    assert code == 1, printed
    assert report["blessed"] is False
    failed = {c["name"]: c for c in report["checks"] if not c["passed"]}
    assert "max_regression" in failed, report
    regression = failed["max_regression"]
    # refused on its interval: confidently worse than the champion beyond the tolerance
    assert regression["difference"] < 0 and regression["ci_low"] < -regression["threshold"]
    assert regression["ci_low"] <= regression["difference"] <= regression["ci_high"]
    assert "FAIL max_regression" in printed and "paired bootstrap" in printed
    # every slice big enough was compared on its own interval
    assert any(s["judged"] for s in report["slices"]), report["slices"]
    main_sha = sh(repo, "git", "rev-parse", "main").strip()
    main_lock = yaml.safe_load(sh(repo, "git", "show", "main:dvc.lock"))
    (main_model,) = [
        o["md5"]
        for stage in main_lock["stages"].values()
        for o in stage.get("outs", [])
        if o["path"] == "models/model.skops"
    ]
    assert report["champion"] == {"ref": "main", "commit": main_sha, "model_md5": main_model}
    assert report["challenger"]["model_md5"] == file_md5(repo / "models/model.skops")
    assert report["challenger"]["model_md5"] != report["champion"]["model_md5"]
    # the challenger's card describes what it was trained on; no commit or verdict inside
    card = json.loads((repo / "models/model_card.json").read_text())
    assert [f["name"] for f in card["features"]["numeric"]] == ["tickets_28d", "monthly_price"]
    assert card["model"]["md5"] == report["challenger"]["model_md5"]
    assert "git_commit" not in card and "gate" not in card
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-q", "-m", "weak challenger (not pushed)")


def test_an_equal_challenger_is_blessed_unless_an_improvement_is_required(
    repo: Path, first_run: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    # main's params, data and model: the champion itself, as a challenger
    sh(repo, "git", "checkout", "-q", "-b", "same", "main")
    sh(repo, "dvc", "checkout", "-q", "--with-deps", "card")
    code, report = gate_here(repo, monkeypatch)
    assert code == 0, report
    assert report["blessed"] is True
    assert report["challenger"]["model_md5"] == report["champion"]["model_md5"]
    assert {c["name"] for c in report["checks"]} >= {"max_regression", "max_slice_regression"}
    # the same model on the same rows: a difference of 0 on every resample
    same = next(c for c in report["checks"] if c["name"] == "max_regression")
    assert (same["difference"], same["ci_low"], same["ci_high"]) == (0.0, 0.0, 0.0)

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["gate"]["min_improvement"] = 0.01
    strict = repo.parent / "strict.yaml"
    strict.write_text(yaml.safe_dump(params))
    code, report = gate_here(repo, monkeypatch, "--params", str(strict))
    assert code == 1, report
    assert [c["name"] for c in report["checks"] if not c["passed"]] == ["min_improvement"]

    # a stamped card for the serving image: this commit and the verdict on this model
    stamped = repo / "build/model_card.json"
    assert stamp_main(["--out", str(stamped)]) == 0
    card = json.loads(stamped.read_text())
    assert card["git_commit"] == sh(repo, "git", "rev-parse", "HEAD").strip()
    assert card["gate"] == report


def test_a_champion_in_neither_cache_nor_remote_counts_as_none(
    repo: Path, first_run: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the weak branch's model was committed but never pushed; without the local cache, no copy
    cache = repo / ".dvc/cache"
    shutil.move(cache, repo.parent / "cache-aside")
    try:
        code, report = gate_here(repo, monkeypatch, "--ref", "weak")
    finally:
        shutil.move(repo.parent / "cache-aside", cache)
    assert code == 0, report
    assert report["champion"] is None
    assert "neither the DVC cache nor the remote" in report["champion_missing"]
    assert [c["name"] for c in report["checks"]] == BASELINE


def test_a_champion_whose_feature_listing_is_missing_counts_as_none(
    repo: Path, first_run: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the model is in the cache, but the listing of the directory that holds the champion's
    # feature schema is not (a clone whose cache never saw that version): dvc-data raises
    # DataIndexDirError, which must read as "no champion", not crash the gate
    lock = yaml.safe_load(sh(repo, "git", "show", "weak:dvc.lock"))
    outs = lock["stages"]["features"]["outs"]
    listing = next(o["md5"] for o in outs if o["path"] == "artifacts/features")
    cached = repo / ".dvc/cache/files/md5" / listing[:2] / listing[2:]
    aside = repo.parent / "listing-aside"
    shutil.move(cached, aside)
    try:
        code, report = gate_here(repo, monkeypatch, "--ref", "weak")
    finally:
        shutil.move(aside, cached)
    assert code == 0, report
    assert report["champion"] is None
    assert "DataIndexDirError" in report["champion_missing"]
