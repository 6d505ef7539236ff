"""The shadow's live record: verdicts on logs with a known answer, read from real log files."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from sklearn.metrics import average_precision_score

from stages.cli import shadow as shadow_cli
from stages.contract.prediction_log import log_schema
from stages.lib.bootstrap import pr_auc
from stages.lib.insights import render_html
from stages.lib.shadow import (
    BETTER,
    DATE,
    SAME,
    TOO_FEW,
    WORSE,
    ShadowConfig,
    agreement,
    read_log,
    shadow_record,
)
from stages.lib.shadow_page import served_section
from stages.lib.skew import serving_skew

KEY = "customer_id"
NUMERIC = ("sessions_7d",)
CATEGORICAL = ("plan",)
DAY = dt.date(2026, 3, 1)
CFG = ShadowConfig(threshold=0.5, min_labelled=200, resamples=300, seed=7)


def write_log(
    folder: Path,
    keys: list[str],
    scores: np.ndarray,
    shadow: np.ndarray | None,
    *,
    day: dt.date = DAY,
    sessions: np.ndarray | None = None,
    plans: list[str] | None = None,
    authenticated: bool = True,
    name: str = "part-20260301T000000000000Z-1-000001.parquet",
) -> Path:
    """One log file, in the contract's schema, of one-row requests at `day`."""
    n = len(keys)
    start = dt.datetime.combine(day, dt.time(8), tzinfo=dt.UTC)
    rows = [
        {
            "request_id": f"r{i}",
            "row": 0,
            "time": start + dt.timedelta(seconds=i),
            "latency_ms": 1.0,
            "authenticated": authenticated,
            "model_name": "churn",
            "model_version": "champion-1",
            "data_version": "d1",
            "git_commit": "abc",
            KEY: keys[i],
            "features": {
                "sessions_7d": float(sessions[i]) if sessions is not None else 1.0,
                "plan": plans[i] if plans is not None else "basic",
            },
            "score": float(scores[i]),
            "decision": bool(scores[i] >= 0.5),
            "shadow_model_version": None if shadow is None else "shadow-2",
            "shadow_score": None if shadow is None else float(shadow[i]),
        }
        for i in range(n)
    ]
    path = folder / f"date={day.isoformat()}" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(
        rows, schema=log_schema(KEY, NUMERIC, CATEGORICAL, regression=False)
    )
    pq.write_table(table, path)
    return path


def synthetic(n: int, champion_noise: float, shadow_noise: float, seed: int = 3):
    """Labels and two models' scores: each a logistic of the label's signal plus its noise."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(float)
    signal = 2.0 * y - 1.0

    def model(noise: float) -> np.ndarray:
        return 1 / (1 + np.exp(-(signal + noise * rng.normal(size=n))))

    return y, model(champion_noise), model(shadow_noise)


def record_of(tmp_path: Path, y: np.ndarray, champion: np.ndarray, shadow: np.ndarray) -> dict:
    keys = [f"c{i}" for i in range(len(y))]
    write_log(tmp_path / "log", keys, champion, shadow)
    log, info = read_log(str(tmp_path / "log"), 7)
    labels = pd.DataFrame({KEY: keys, DATE: DAY, "label": y})
    return shadow_record(log, labels, key=KEY, regression=False, cfg=CFG, log_info=info)


def test_a_clearly_better_shadow_is_called_better(tmp_path):
    y, champion, shadow = synthetic(800, champion_noise=3.0, shadow_noise=0.7)
    record = record_of(tmp_path, y, champion, shadow)
    assert record["verdict"] == BETTER
    auc = record["realised"]["metrics"]["roc_auc"]
    assert auc["shadow"] > auc["champion"] and auc["ci_low"] > 0
    assert record["realised"]["n"] == 800
    assert record["model_version"] == "champion-1"
    assert record["shadow_model_version"] == "shadow-2"
    assert set(record["realised"]["metrics"]) == {"roc_auc", "pr_auc"}


def test_a_clearly_worse_shadow_is_called_worse(tmp_path):
    y, champion, shadow = synthetic(800, champion_noise=0.7, shadow_noise=3.0)
    record = record_of(tmp_path, y, champion, shadow)
    assert record["verdict"] == WORSE
    assert record["realised"]["metrics"]["roc_auc"]["ci_high"] < 0


def test_a_shadow_that_ranks_the_same_is_not_distinguishable(tmp_path):
    # a monotone transform of the champion's scores: the same ranking, the same ROC AUC
    y, champion, _ = synthetic(800, champion_noise=1.5, shadow_noise=1.5)
    record = record_of(tmp_path, y, champion, champion**2)
    assert record["verdict"] == SAME
    auc = record["realised"]["metrics"]["roc_auc"]
    assert auc["improvement"] == 0 and auc["ci_low"] <= 0 <= auc["ci_high"]
    # the scores moved, the decisions with them: the record says so
    assert record["score_psi"]["value"] > 0.1
    assert record["agreement"]["agreement"] < 1


def test_too_few_labelled_requests_says_how_many_more(tmp_path):
    y, champion, shadow = synthetic(400, champion_noise=3.0, shadow_noise=0.7)
    keys = [f"c{i}" for i in range(400)]
    write_log(tmp_path / "log", keys, champion, shadow)
    log, info = read_log(str(tmp_path / "log"), 7)
    # only 50 of the requests have a matured label
    labels = pd.DataFrame({KEY: keys[:50], DATE: DAY, "label": y[:50]})
    record = shadow_record(log, labels, key=KEY, regression=False, cfg=CFG, log_info=info)
    assert record["verdict"] == TOO_FEW
    assert record["realised"]["n"] == 50
    assert record["realised"]["needed"] == 150
    assert "150 more" in record["realised"]["detail"]
    # agreement and the score PSI need no label
    assert record["agreement"]["n"] == 400


def test_repeated_requests_of_one_entity_count_once(tmp_path):
    y, champion, shadow = synthetic(300, champion_noise=3.0, shadow_noise=0.7)
    keys = [f"c{i % 150}" for i in range(300)]  # each entity asked twice the same day
    write_log(tmp_path / "log", keys, champion, shadow)
    log, info = read_log(str(tmp_path / "log"), 7)
    labels = pd.DataFrame({KEY: [f"c{i}" for i in range(150)], DATE: DAY, "label": y[:150]})
    record = shadow_record(log, labels, key=KEY, regression=False, cfg=CFG, log_info=info)
    assert record["realised"]["n"] == 150
    assert record["verdict"] == TOO_FEW


def test_agreement_counts_both_ways_of_disagreeing():
    champion = np.array([0.9, 0.8, 0.2, 0.1, 0.6])
    shadow = np.array([0.7, 0.3, 0.6, 0.1, 0.5])
    a = agreement(champion, shadow, 0.5)
    assert a["agreement"] == pytest.approx(0.6)
    assert (a["champion_only_positive"], a["shadow_only_positive"]) == (1, 1)


def test_pr_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    y = (rng.random(300) < 0.2).astype(float)
    scores = np.round(rng.random(300) * 0.5 + 0.4 * y, 1)  # many ties
    found = pr_auc(y, scores, np.ones((1, len(y))))[0]
    assert found == pytest.approx(average_precision_score(y, scores))


def test_no_shadow_and_no_log_are_reported_not_judged(tmp_path):
    keys = ["a", "b"]
    write_log(tmp_path / "log", keys, np.array([0.2, 0.7]), None)
    log, info = read_log(str(tmp_path / "log"), 7)
    record = shadow_record(log, None, key=KEY, regression=False, cfg=CFG, log_info=info)
    assert (record["status"], record["verdict"]) == ("no_shadow", None)
    log, info = read_log(str(tmp_path / "missing"), 7)
    assert log is None and info["status"] == "absent"


def test_unauthenticated_requests_are_not_judged_by_default(tmp_path):
    write_log(tmp_path / "log", ["a"], np.array([0.2]), np.array([0.3]), authenticated=False)
    log, info = read_log(str(tmp_path / "log"), 7)
    assert log is None and info["status"] == "unauthenticated"
    log, info = read_log(str(tmp_path / "log"), 7, authenticated_only=False)
    assert len(log) == 1


def test_a_later_champion_shadow_pair_is_judged_alone(tmp_path):
    write_log(tmp_path / "log", ["a", "b"], np.array([0.2, 0.7]), np.array([0.3, 0.6]))
    log, _ = read_log(str(tmp_path / "log"), 7)
    later = log.assign(
        shadow_model_version="shadow-3", time=log["time"] + pd.Timedelta(hours=1)
    ).iloc[:1]
    record = shadow_record(
        pd.concat([log, later], ignore_index=True), None, key=KEY, regression=False, cfg=CFG
    )
    assert record["shadow_model_version"] == "shadow-3" and record["rows"] == 1


# --- the command, over the monitor stage's files ------------------------------------------


def card(path: Path) -> Path:
    features = {
        "entity_key": KEY,
        "numeric": [{"name": "sessions_7d", "min": 0.0, "max": 10.0, "type": "float64"}],
        "categorical": [{"name": "plan", "observed": ["basic", "premium"], "type": "string"}],
    }
    doc = {"data": {"train_snapshot_dates": ["2026-02-01"]}, "features": features}
    path.write_text(json.dumps(doc))
    return path


def test_evergreen_shadow_writes_the_record_and_the_skew(tmp_path, capsys, monkeypatch):
    params = yaml.safe_load(Path("params.yaml").read_text())
    # dvc.yaml's paths are relative to the repository root: the command runs there
    monkeypatch.chdir(tmp_path)
    params["serve"]["predictions_path"] = str(tmp_path / "log")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    stage = {
        "cmd": "python -m stages.monitor prof card.json predict prep out.json hist.csv "
        "--train train.parquet"
    }
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"monitor": stage}}))
    events = params["dataset"]["tables"]
    table = next(name for name, t in events.items() if t.get("role") == "events")
    (tmp_path / "prof" / table).mkdir(parents=True)
    # the latest day of data is the requests' day: no label has matured
    (tmp_path / "prof" / table / f"date={DAY.isoformat()}.json").write_text("{}")
    card(tmp_path / "card.json")
    rng = np.random.default_rng(1)
    train = pd.DataFrame(
        {
            "snapshot_date": np.repeat(pd.to_datetime(["2026-02-01", "2026-02-08"]), 500),
            "sessions_7d": rng.uniform(0, 10, 1000),
            "plan": rng.choice(["basic", "premium"], 1000),
        }
    )
    train.to_parquet(tmp_path / "train.parquet")
    n = 300
    sessions = rng.uniform(0, 10, n) + 8  # shifted: many above the training range
    plans = ["gold"] * 40 + list(rng.choice(["basic", "premium"], n - 40))
    write_log(
        tmp_path / "log",
        [f"c{i}" for i in range(n)],
        rng.random(n),
        rng.random(n),
        sessions=sessions,
        plans=plans,
    )
    code = shadow_cli.main(
        [
            "--params",
            str(tmp_path / "params.yaml"),
            "--dvc-yaml",
            str(tmp_path / "dvc.yaml"),
            "--out",
            str(tmp_path / "shadow.json"),
        ]
    )
    assert code == 0, capsys.readouterr().err
    out = json.loads((tmp_path / "shadow.json").read_text())
    assert out["shadow"]["verdict"] == TOO_FEW
    assert out["shadow"]["realised"]["needed"] == 200
    skew = out["serving_skew"]
    assert skew["skewed"] == ["plan", "sessions_7d"]
    outside = {o["input"]: o for o in skew["outside_training"]}
    assert outside["sessions_7d"]["above"] == int(np.sum(sessions > 10))
    assert outside["plan"]["values"] == {"gold": 40}
    printed = capsys.readouterr().out
    assert TOO_FEW in printed and "gold" in printed


def test_evergreen_shadow_names_a_missing_dvc_yaml(tmp_path, capsys):
    assert shadow_cli.main(["--dvc-yaml", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("shadow: ") and "nope.yaml" in err and len(err.splitlines()) == 1


def test_the_insights_page_shows_the_verdict_and_the_skew(tmp_path):
    y, champion, shadow = synthetic(800, champion_noise=3.0, shadow_noise=0.7)
    record = record_of(tmp_path, y, champion, shadow)
    train = pd.DataFrame({"sessions_7d": np.arange(100.0) % 10, "plan": ["basic"] * 100})
    served = pd.DataFrame({"sessions_7d": np.arange(100.0) % 10 + 20, "plan": ["gold"] * 100})
    skew = serving_skew(
        train,
        served,
        json.loads(card(tmp_path / "card.json").read_text())["features"],
        bins=10,
        psi_threshold=0.25,
        js_threshold=0.1,
        confidence=0.99,
        min_count=30,
    )
    page = served_section(SimpleNamespace(monitor={"shadow": record, "serving_skew": skew}))
    html = render_html("t", page.sections, page.figures)
    assert f"Verdict: <strong>{BETTER}</strong> on 800 labelled requests" in html
    assert "<td>roc_auc</td>" in html and "<td>sessions_7d</td>" in html
    assert "2 skewed" in html
    # a monitor report written before the record existed: no section
    assert served_section(SimpleNamespace(monitor={})).sections == []
