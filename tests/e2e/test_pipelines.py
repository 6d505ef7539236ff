"""The two pipelines on a temporary git + DVC repository (README "Two pipelines"): a new day
through `evergreen run prediction` runs no training stage and is scored by the champion; a
training run with promotion moves the champion; `evergreen run daily` asks the policy."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from stages.contract.card import file_md5
from tests.e2e.helpers import init_repo, ran_stages, run, sh

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TRAINING = {"features", "split", "drift", "train", "evaluate", "export", "card"}
PREDICTION = {"validate", "profiles", "prepare", "predict_set", "predict", "monitor", "report"}
# a small shop, no tuning, loose gate bounds: this tests the pipelines, not the model
SETTINGS = (
    "train.n_trials=0",
    "gate.max_regression=0.3",
    "gate.max_slice_regression=0.5",
)


def champion_md5(repo: Path) -> str:
    return yaml.safe_load((repo / "models/champion.dvc").read_text())["outs"][0]["md5"]


def published(repo: Path, day: str) -> pd.DataFrame:
    return pd.read_parquet(repo / f"lake/predictions/date={day}/predictions.parquet")


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = init_repo(tmp_path_factory.mktemp("pipelines"))
    sh(repo, "evergreen", "overrides", "apply", *(f"--set={s}" for s in SETTINGS))
    sh(repo, "evergreen", "params")
    simulate = ("evergreen", "lake", "simulate", "--lake", "lake")
    sh(repo, *simulate, "--start", "2026-01-01", "--days", "60", "--customers", "300")
    sh(repo, "evergreen", "ingest", "--lake", "lake")
    # no champion yet: the prediction run refuses in one line, and trains nothing
    refused = run(repo, "evergreen", "run", "prediction")
    assert refused.returncode == 2 and not (repo / "dvc.lock").exists()
    assert refused.stderr.strip().splitlines() == [
        "evergreen run prediction: no model in production: run `evergreen run training` "
        "then promote"
    ]
    trained = sh(repo, "evergreen", "run", "training", "--promote")
    assert ran_stages(trained) >= TRAINING and not {"predict", "report"} & ran_stages(trained)
    assert "promoted" in trained and (repo / "models/champion.dvc").is_file()
    first = sh(repo, "evergreen", "run", "prediction")
    assert ran_stages(first) == {"predict_set", "predict", "monitor", "report"}
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-q", "-m", "first champion")
    return repo


def test_a_new_day_runs_no_training_stage_and_the_champion_scores_it(repo: Path) -> None:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    sh(repo, "evergreen", "lake", "simulate", "--lake", "lake", "--days", "1")
    sh(repo, "evergreen", "ingest", "--lake", "lake")
    out = sh(repo, "evergreen", "run", "prediction")
    assert ran_stages(out) == PREDICTION
    assert "prediction run: stages run: validate, profiles, prepare, predict_set" in out
    after = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    for stage in TRAINING:  # untouched: DVC did not run them
        assert after[stage] == lock[stage], stage
    assert after["validate"] != lock["validate"]
    # the champion scored the day: the published predictions carry its ONNX md5
    day = published(repo, "2026-03-02")
    assert set(day["model_version"]) == {file_md5(repo / "models/champion/model.onnx")}
    assert "up to date" in sh(repo, "dvc", "status", "report")
    again = sh(repo, "evergreen", "run", "prediction")
    assert ran_stages(again) == set() and "stages run: none (up to date)" in again


def test_the_prediction_run_gives_the_same_bytes_again(repo: Path) -> None:
    files = ("artifacts/predict_set/predict.parquet", "artifacts/predict/predictions.parquet")
    before = {f: (repo / f).read_bytes() for f in files}
    for folder in ("artifacts/predict_set", "artifacts/predict"):
        shutil.rmtree(repo / folder)
    sh(repo, "dvc", "repro", "--force", "--no-run-cache", "--single-item", "predict_set", "predict")
    assert {f: (repo / f).read_bytes() for f in files} == before


def test_daily_asks_the_policy_and_a_due_training_moves_the_champion(repo: Path) -> None:
    # the champion's data ends 2026-03-01 and the lake now at 2026-03-02: a weekly schedule
    # waits, a daily one trains
    sh(repo, "evergreen", "params", "retrain.policy=every_7_days")
    waits = sh(repo, "evergreen", "run", "daily")
    assert "daily: policy 'every_7_days': no training (schedule: next training in 6 day(s))" in (
        waits
    )
    sh(repo, "evergreen", "params", "retrain.policy=every_7_days",
       "retrain.policies.every_7_days.every_days=1")  # fmt: skip
    before = champion_md5(repo)
    daily = sh(repo, "evergreen", "run", "daily", "--train")
    assert "policy 'every_7_days': TRAIN (schedule: 1 days since the last training)" in daily
    assert {"features", "train"} <= ran_stages(daily) and "promoted" in daily
    assert champion_md5(repo) != before
    # the new champion scored the day again
    day = published(repo, "2026-03-02")
    assert set(day["model_version"]) == {file_md5(repo / "models/champion/model.onnx")}
    assert file_md5(repo / "models/champion/model.onnx") == file_md5(repo / "models/model.onnx")


def test_champion_refuses_a_model_dvc_lock_does_not_record(repo: Path) -> None:
    onnx = repo / "models/model.onnx"
    saved = onnx.read_bytes()
    try:
        onnx.write_bytes(saved + b"\0")
        done = run(repo, "evergreen", "champion")
    finally:
        onnx.write_bytes(saved)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "evergreen champion: models/model.onnx: not the model dvc.lock records (a stale or "
        "hand-made file): run `evergreen run training`"
    )
