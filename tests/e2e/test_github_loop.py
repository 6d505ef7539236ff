"""The GitHub loop offline: what retrain.yml, pr-report.yml and promote.yml run, in order.

A bare git repository is `origin`; a moto S3 server on 127.0.0.1 is both the lake
(s3://BUCKET/lake) and the DVC remote (s3://BUCKET/dvc). Each job runs in a fresh clone of
origin, as on a runner. Play: a champion on main -> new days land in the lake -> `evergreen
retrain` (the training run) pushes retrain/<date> with the new dvc.lock, the verdict, the new
champion (models/champion.dvc) and the report -> the PR check (`dvc pull`, `dvc status`,
`evergreen gate`, `evergreen report pr`) reproduces both -> merge into main -> `evergreen
promote` tags the version with GTO, stamps the card and writes the image's build context ->
`evergreen canary` starts the server from it and checks /info's version -> daily.yml's
prediction run on main scores a new day with the merged champion and trains nothing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from stages.cli.gate import recorded_md5
from stages.contract.card import file_md5
from tests.e2e.helpers import both_runs, init_repo, ran_stages, run, sh
from tests.server_process import free_port
from tests.stages.test_ingest import s3_endpoint  # noqa: F401 (a real moto S3 server)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DATE = "2026-03-09"
# small and fast: few customers, no tuning; loose gate bounds, since this tests the loop and
# not how well a 300-customer shop can be learned
SETTINGS = (
    "train.n_trials=0",
    "gate.min_roc_auc=0.5",
    "gate.min_pr_auc=0.1",
    "gate.max_brier=0.3",
    "gate.max_regression=0.3",
    "gate.max_slice_regression=0.5",
)


def show(repo: Path, rev: str, path: str) -> str:
    return sh(repo, "git", "show", f"{rev}:{path}")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, s3_endpoint: str) -> Iterator[dict]:  # noqa: F811
    import boto3

    base = tmp_path_factory.mktemp("github")
    # DVC's S3 client refuses os.devnull as the AWS config file (the moto fixture's isolation
    # from a developer's own AWS setup): an empty file isolates as well
    empty = base / "aws-empty"
    empty.touch()
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
    bucket = "evergreen-e2e"
    boto3.client("s3").create_bucket(Bucket=bucket)
    lake = f"s3://{bucket}/lake"
    origin = base / "origin.git"
    sh(base, "git", "init", "-q", "--bare", "-b", "main", str(origin))

    # main with a champion, as a maintainer sets it up
    seed = init_repo(base)
    sh(seed, "dvc", "remote", "add", "-d", "s3", f"s3://{bucket}/dvc")
    sh(seed, "evergreen", "overrides", "apply", *(f"--set={s}" for s in SETTINGS))
    sh(seed, "evergreen", "params")
    simulate = ("evergreen", "lake", "simulate", "--lake", lake)
    sh(seed, *simulate, "--start", "2026-01-01", "--days", "60", "--customers", "300")
    sh(seed, "evergreen", "ingest", "--lake", lake)
    both_runs(seed)
    sh(seed, "evergreen", "gate")
    sh(seed, "git", "add", "-A")
    sh(seed, "git", "commit", "-q", "-m", "champion")
    sh(seed, "dvc", "push", "-q")
    sh(seed, "git", "remote", "add", "origin", str(origin))
    sh(seed, "git", "push", "-q", "origin", "main")
    # a week later: new days in the lake
    sh(seed, *simulate, "--days", "7")
    yield {"base": base, "origin": origin, "lake": lake, "bucket": bucket}
    monkeypatch.undo()


def clone(world: dict, name: str, *args: str) -> Path:
    sh(world["base"], "git", "clone", "-q", *args, str(world["origin"]), name)
    return world["base"] / name


@pytest.fixture(scope="module")
def retrained(world: dict) -> dict:
    """retrain.yml: `evergreen retrain` in a fresh clone, overrides through the environment."""
    runner = clone(world, "runner")
    champion = sh(runner, "git", "rev-parse", "HEAD").strip()
    env_overrides = "evaluate.threshold=0.45"
    os.environ["OVERRIDES"] = env_overrides
    try:
        done = run(runner, "evergreen", "retrain", "--lake", world["lake"], "--date", DATE)
    finally:
        del os.environ["OVERRIDES"]
    assert done.returncode == 0, done.stdout + done.stderr
    return {
        "runner": runner,
        "champion": champion,
        "output": done.stdout,
        "overrides": env_overrides,
    }


def test_retrain_pushes_a_branch_with_the_new_lock_verdict_and_report(
    world: dict, retrained: dict
) -> None:
    origin, branch = world["origin"], f"retrain/{DATE}"
    heads = sh(origin, "git", "for-each-ref", "--format=%(refname)", "refs/heads")
    assert f"refs/heads/{branch}" in heads.split()
    old_lock = yaml.safe_load(show(origin, "main", "dvc.lock"))
    new_lock = yaml.safe_load(show(origin, branch, "dvc.lock"))
    # the new days: another data snapshot, another model
    assert new_lock["stages"]["validate"]["deps"] != old_lock["stages"]["validate"]["deps"]
    assert recorded_md5(new_lock, "models/model.skops") != recorded_md5(
        old_lock, "models/model.skops"
    )
    # the override reached conf/ (hence params.yaml), through the environment only
    params = yaml.safe_load(show(origin, branch, "params.yaml"))
    assert params["evaluate"]["threshold"] == 0.45

    gate = json.loads(show(origin, branch, "metrics/gate.json"))
    assert gate["blessed"] is True, gate
    assert gate["champion"]["commit"] == retrained["champion"]
    assert gate["challenger"]["model_md5"] == recorded_md5(new_lock, "models/model.skops")
    # blessed, so the branch carries the new champion: merging it promotes
    champion = yaml.safe_load(show(origin, branch, "models/champion.dvc"))["outs"][0]["md5"]
    assert champion != yaml.safe_load(show(origin, "main", "models/champion.dvc"))["outs"][0]["md5"]
    monitor = json.loads(show(origin, branch, "metrics/monitor.json"))
    assert monitor["date"] == "2026-03-08"  # the prediction stages reran on the new champion

    report = show(origin, branch, "review/report.md")
    old = json.loads(show(origin, "main", "metrics/evaluate.json"))
    new = json.loads(show(origin, branch, "metrics/evaluate.json"))
    change = round(new["roc_auc"] - old["roc_auc"], 6) + 0.0
    row = next(line for line in report.splitlines() if line.startswith("| roc_auc |"))
    assert row.startswith(f"| roc_auc | {old['roc_auc']!r} | {new['roc_auc']!r} | {change:+.6f}")
    assert "| `evaluate.threshold` | `0.5` | `0.45` |" in report
    old_rows = json.loads(show(origin, "main", "metrics/validation.json"))["rows_in"]
    new_rows = json.loads(show(origin, branch, "metrics/validation.json"))["rows_in"]
    assert new_rows > old_rows
    assert f"| rows_in | {old_rows} | {new_rows} | {new_rows - old_rows:+d} |" in report
    assert "**✅ blessed**" in report


def test_the_pr_check_reproduces_the_verdict_and_the_report(world: dict, retrained: dict) -> None:
    """pr-report.yml: a fresh clone of the branch, `dvc pull`, nothing to reproduce, the gate and
    the report give back exactly what the retrain job committed."""
    pr = clone(world, "pr", "-b", f"retrain/{DATE}")
    sh(pr, "dvc", "pull", "-q")
    assert "up to date" in sh(pr, "dvc", "status")
    committed_gate = (pr / "metrics/gate.json").read_text()
    sh(pr, "evergreen", "gate", "--ref", "origin/main")
    assert (pr / "metrics/gate.json").read_text() == committed_gate
    sh(pr, "evergreen", "report", "pr", "--base", "origin/main", "--out", "build/report.md")
    assert (pr / "build/report.md").read_text() == (pr / "review/report.md").read_text()


def test_merge_then_promote_tags_builds_and_serves_the_new_model(
    world: dict, retrained: dict
) -> None:
    maintainer = clone(world, "maintainer")
    sh(maintainer, "git", "merge", "-q", "--no-ff", "--no-edit", f"origin/retrain/{DATE}")
    sh(maintainer, "git", "push", "-q", "origin", "main")
    merge = sh(maintainer, "git", "rev-parse", "HEAD").strip()

    # promote.yml: a fresh clone of main at the merge commit
    promoter = clone(world, "promoter")
    done = run(promoter, "evergreen", "promote", "--out", "build")
    assert done.returncode == 0, done.stdout + done.stderr
    tags = sh(promoter, "git", "ls-remote", "--tags", "origin")
    peeled = {
        line.split("\t")[1].removesuffix("^{}"): line.split("\t")[0]
        for line in tags.splitlines()
        if line.endswith("^{}")
    }
    assert peeled == {"refs/tags/churn@v0.1.0": merge, "refs/tags/churn#prod#1": merge}
    lock = yaml.safe_load(show(promoter, "HEAD", "dvc.lock"))
    onnx_md5 = recorded_md5(lock, "models/model.onnx")
    release = json.loads((promoter / "build/release.json").read_text())
    assert release["version"] == "v0.1.0" and release["onnx_md5"] == onnx_md5
    context = promoter / "build/serve"
    assert (context / "Dockerfile").is_file()
    card = json.loads((context / "model/model_card.json").read_text())
    assert card["git_commit"] == merge and card["gate"]["blessed"] is True

    # the image's infra check, on a server started from the context as a real process
    canary = run(promoter, "evergreen", "canary", "--context", "build/serve")
    assert canary.returncode == 0, canary.stdout + canary.stderr
    assert f"/info version {onnx_md5} commit {merge[:12]}" in canary.stdout
    # and it fails when there is nothing to check
    dead = run(promoter, "evergreen", "canary", "--context", "build/serve", "--wait", "1", "--url",
               f"http://127.0.0.1:{free_port()}")  # fmt: skip
    assert dead.returncode == 1 and "canary: FAILED" in dead.stderr

    # promoting the same commit again registers nothing new
    again = run(promoter, "evergreen", "promote", "--out", "build2")
    assert again.returncode == 0, again.stdout + again.stderr
    assert sh(promoter, "git", "ls-remote", "--tags", "origin") == tags


def test_after_the_merge_the_daily_prediction_run_scores_with_the_new_champion(
    world: dict, retrained: dict
) -> None:
    """daily.yml on main after the merge: `dvc pull`, a new day ingested, `evergreen run daily`:
    the prediction stages only, scored by the merged champion, published to the lake."""
    import boto3
    import pandas as pd

    daily = clone(world, "daily")
    sh(daily, "dvc", "pull", "-q")
    sh(daily, "evergreen", "lake", "simulate", "--lake", world["lake"], "--days", "1")
    sh(daily, "evergreen", "ingest", "--lake", world["lake"])
    out = sh(daily, "evergreen", "run", "daily", "--lake", world["lake"])
    assert ran_stages(out) == {
        "validate", "profiles", "prepare", "predict_set", "predict", "monitor", "report"
    }  # fmt: skip
    assert "daily: policy 'monitor': no training" in out
    onnx = file_md5(daily / "models/champion/model.onnx")
    lock = yaml.safe_load((daily / "dvc.lock").read_text())
    assert onnx == recorded_md5(lock, "models/model.onnx")  # the merged model is the champion
    key = "lake/predictions/date=2026-03-09/predictions.parquet"
    body = boto3.client("s3").get_object(Bucket=world["bucket"], Key=key)["Body"].read()
    (daily / "published.parquet").write_bytes(body)
    assert set(pd.read_parquet(daily / "published.parquet")["model_version"]) == {onnx}
