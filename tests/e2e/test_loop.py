"""The whole loop on a temporary git + DVC repository: lake -> ingest -> dvc repro -> new day."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
import yaml

from stages.contract.feature_schema import load_schema
from stages.lib.model_io import load_model
from tests.e2e.helpers import both_runs, e2e_env, init_repo, ran_stages, sh
from tests.server_process import free_port, running_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = init_repo(tmp_path_factory.mktemp("loop"))
    sh(
        repo,
        "evergreen",
        "lake",
        "simulate",
        "--lake",
        "lake",
        "--start",
        "2026-01-01",
        "--days",
        "60",
        "--seed",
        "7",
    )
    sh(repo, "evergreen", "ingest", "--lake", "lake")
    out = both_runs(repo)
    # the two runs together run every stage of the graph
    assert ran_stages(out) == set(yaml.safe_load((repo / "dvc.yaml").read_text())["stages"])
    assert {"validate", "prepare", "features", "split", "train", "evaluate"} <= ran_stages(out)
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-q", "-m", "first model")
    return repo


def _metrics(repo: Path) -> dict:
    return json.loads((repo / "metrics/evaluate.json").read_text())


def test_model_learns_churn_on_the_out_of_time_test_snapshot(repo: Path) -> None:
    metrics = _metrics(repo)
    assert metrics["roc_auc"] > 0.7, metrics
    assert 0 < metrics["positive_rate"] < 1


def test_a_rerun_from_scratch_gives_byte_identical_metrics(repo: Path) -> None:
    before = {p: (repo / p).read_bytes() for p in ("metrics/train.json", "metrics/evaluate.json")}
    for out in ("artifacts", "models", "metrics", "plots"):
        shutil.rmtree(repo / out)
    out = both_runs(repo, "--force", "--no-run-cache")
    assert "train" in ran_stages(out)
    after = {p: (repo / p).read_bytes() for p in before}
    assert after == before
    assert "up to date" in sh(repo, "dvc", "status")


def test_push_then_pull_restores_the_model(repo: Path) -> None:
    sh(repo, "dvc", "push")
    model = repo / "models/model.skops"
    expected = model.read_bytes()
    model.unlink()
    shutil.rmtree(repo / ".dvc/cache")
    sh(repo, "dvc", "pull", "models/model.skops")
    assert model.read_bytes() == expected


def test_served_model_scores_the_prediction_set(repo: Path, tmp_path: Path) -> None:
    schema = load_schema(repo / "artifacts/features/feature_schema.json")
    predict = pd.read_parquet(repo / "artifacts/features/predict.parquet").head(50)
    frame = predict[[schema.entity_key, *schema.features]]
    records = json.loads(frame.to_json(orient="records"))  # NaN -> null, as a client sends it
    expected = load_model(repo / "models/model.skops").predict_proba(frame[schema.features])[:, 1]
    port = free_port()
    cmd = ["evergreen", "serve", "--port", str(port)]
    with running_server(cmd, port, tmp_path / "serve.log", cwd=repo, env=e2e_env()) as (url, _):
        response = requests.post(f"{url}/predict", json={"records": records}, timeout=30)
        bad = requests.post(f"{url}/predict", json={"records": [{"customer_id": 1}]}, timeout=30)
    assert response.status_code == 200, response.text
    got = response.json()["predictions"]
    assert [p["customer_id"] for p in got] == predict[schema.entity_key].tolist()
    np.testing.assert_allclose([p["score"] for p in got], expected, rtol=0, atol=1e-9)
    assert bad.status_code == 422 and schema.features[0] in bad.text


def test_one_more_day_reruns_what_it_affects_then_nothing(repo: Path) -> None:
    sh(repo, "evergreen", "lake", "simulate", "--lake", "lake", "--days", "1")
    ingest = sh(repo, "evergreen", "ingest", "--lake", "lake")
    assert "new" in ingest
    out = sh(repo, "dvc", "repro")
    assert {"validate", "prepare", "features", "train", "evaluate"} <= ran_stages(out)
    # validate and prepare did only the new day (their outputs are persisted, with a manifest)
    assert "validate: 2 partition(s) validated" in out
    assert "prepare events: 1 new partition(s) upserted" in out
    again = sh(repo, "dvc", "repro")
    assert ran_stages(again) == set()
    assert "up to date" in again
    assert "up to date" in sh(repo, "dvc", "status")
