"""A dataset is a config file: a second, differently shaped dataset runs the whole pipeline.

`tests/data/plays.yaml` describes a music service unlike the shop: one CSV table partitioned as
`activity/day=YYYY-MM-DD/`, string ids, timestamps with UTC offsets (naive ones in Paris time),
a derived column and no entities table. The test copies `conf/` and `dvc.yaml` into a temporary
repo, drops the file into `conf/dataset/`, composes params with `dataset=plays`, writes a small
lake and runs each stage exactly as `dvc.yaml` calls it (in-process, for speed): no code knows
about this dataset.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import shlex
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from stages.contract.feature_schema import load_schema
from stages.lib.params import compose_params

ROOT = Path(__file__).resolve().parents[2]
DATASET = ROOT / "tests/data/plays.yaml"
STAGES = ("validate", "profiles", "prepare", "features", "split", "drift", "train", "evaluate")
START = dt.date(2026, 1, 5)
DAYS = 24
PARIS = dt.timedelta(hours=1)  # Paris is UTC+1 in January
KINDS = ("play", "skip", "purchase", "complaint")

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _stamp(instant: pd.Timestamp, aware: bool) -> str:
    local = (instant + PARIS).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{local}+01:00" if aware else local


def write_plays_lake(landing: Path, users: int = 120, seed: int = 3) -> dict:
    """A small lake of plays with churn that depends on engagement and complaints; returns
    facts the test checks (a user who switched device, the bad rows planted)."""
    rng = np.random.default_rng(seed)
    region = rng.choice(["north", "south", "east", "west"], users)
    device = rng.choice(["ios", "android", "web"], users).astype(object)
    rate = rng.gamma(2.0, 0.8, users)
    alive = np.ones(users, dtype=bool)
    switcher, switch_day = 0, 16  # changes device between the 2nd and 3rd snapshot
    play_id = 0
    for day in range(DAYS):
        date = START + dt.timedelta(days=day)
        if day == switch_day:
            device[switcher] = "web" if device[switcher] != "web" else "ios"
        rows = []
        for u in np.flatnonzero(alive):
            for _ in range(rng.poisson(rate[u] if u != switcher else 3.0)):
                play_id += 1
                kind = KINDS[rng.choice(4, p=[0.7, 0.15, 0.1, 0.05])]
                instant = pd.Timestamp(date) + pd.Timedelta(seconds=int(rng.integers(0, 86_400)))
                rows.append(
                    {
                        "play_id": f"p{play_id:06d}",
                        "user_id": f"u{u:04d}",
                        "played_at": _stamp(instant, aware=bool(play_id % 2)),
                        "kind": kind,
                        "quantity": int(rng.integers(1, 4)) if kind == "purchase" else None,
                        "unit_price": round(float(rng.uniform(1, 9)), 2)
                        if kind == "purchase"
                        else None,
                        "seconds": round(float(rng.uniform(30, 300)), 1)
                        if kind == "play"
                        else None,
                        "region": region[u],
                        "device": device[u] if rng.random() > 0.05 else None,
                    }
                )
        frame = pd.DataFrame(rows)
        if day == 3:  # planted bad rows: a malformed id, a price out of range
            frame.loc[0, "play_id"] = "x1"
            frame.loc[1, "unit_price"] = 99.0
            frame.loc[1, "quantity"] = 1
        folder = landing / "activity" / f"day={date.isoformat()}"
        folder.mkdir(parents=True, exist_ok=True)
        frame.to_csv(folder / "part-0.csv", index=False)
        complaints = frame[frame.kind == "complaint"].user_id.str[1:].astype(int).to_numpy()
        hazard = 0.015 + 0.06 * (rate < 0.8)
        hazard[complaints] += 0.15
        hazard[switcher] = 0.0
        alive &= rng.random(users) >= hazard
    return {"switcher": f"u{switcher:04d}", "switch_day": START + dt.timedelta(days=switch_day)}


@pytest.fixture(scope="module")
def plays_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    repo = tmp_path_factory.mktemp("plays") / "repo"
    shutil.copytree(ROOT / "conf", repo / "conf")
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    shutil.copy(DATASET, repo / "conf/dataset/plays.yaml")
    overrides = [
        "dataset=plays",
        # a 24-day lake: short windows and snapshots two days apart (still only config)
        "features.windows=[2,4]",
        "features.snapshot_every_days=2",
        "features.min_history_days=4",
        "features.max_snapshots=4",
        "evaluate.slices=[region]",
        "drift.last_days=3",
        "drift.min_count=50",
    ]
    compose_params(repo / "conf", repo / "params.yaml", overrides)
    facts = write_plays_lake(repo / "data/landing")
    return repo, facts


@pytest.fixture(scope="module")
def ran(plays_repo: tuple[Path, dict]) -> tuple[Path, dict]:
    repo, facts = plays_repo
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(repo)
        for name in STAGES:
            argv = shlex.split(stages[name]["cmd"])
            assert argv[:3] == ["python", "-m", f"stages.{name}"], stages[name]["cmd"]
            module = importlib.import_module(argv[2])
            assert module.main(argv[3:]) == 0, f"stage {name} failed"
    return repo, facts


def test_validation_reads_csv_partitions_named_by_day_and_converts_to_utc(ran) -> None:
    repo, _ = ran
    metrics = json.loads((repo / "artifacts/validate/report.json").read_text())["activity"][
        "totals"
    ]
    assert metrics["partitions"] == DAYS and metrics["partitions_faulty"] == 0
    assert metrics["rows_in"] == metrics["rows_valid"] + metrics["rows_quarantined"]
    quarantine = pd.read_parquet(repo / "artifacts/validate/quarantine/activity")
    checks = dict(zip(quarantine["column"], quarantine["check"], strict=True))
    assert checks == {"play_id": "pattern(p[0-9]{6})", "unit_price": "less_than_or_equal_to(50)"}
    history = pd.read_parquet(repo / "artifacts/prepare/activity.parquet")
    assert history["user_id"].str.fullmatch(r"u\d{4}").all()
    # aware ('+01:00') and naive (Paris) stamps alike land as UTC: every play is on its day
    days = history["played_at"].dt.normalize()
    assert (days == pd.to_datetime(history["_partition"])).all()
    bought = history[history.kind == "purchase"]
    assert np.allclose(bought["spend"], bought["quantity"] * bought["unit_price"])
    assert history["spend"][history.kind != "purchase"].isna().all()


def test_no_entities_table_attributes_come_from_the_latest_event(ran) -> None:
    repo, facts = ran
    assert sorted(p.name for p in (repo / "artifacts/prepare").glob("*.parquet")) == [
        "activity.parquet"
    ]
    schema = load_schema(repo / "artifacts/features/feature_schema.json")
    assert schema.entity_key == "user_id" and schema.label == "lapsed"
    assert schema.categorical == ("region", "device")
    assert schema.categories["device"] == ("ios", "android", "web")
    assert "purchases_amount_4d" in schema.numeric and "tenure_days" not in schema.numeric
    snaps = pd.read_parquet(repo / "artifacts/features/snapshots.parquet")
    assert snaps["lapsed"].nunique() == 2
    history = pd.read_parquet(repo / "artifacts/prepare/activity.parquet")
    theirs = history[history.user_id == facts["switcher"]]
    rows = snaps[snaps.user_id == facts["switcher"]]
    assert len(rows) == 4
    for _, row in rows.iterrows():
        # as of the snapshot, never later: the device of the latest play up to that day
        cut = pd.Timestamp(row["snapshot_date"]) + pd.Timedelta(days=1)
        latest = theirs[theirs.played_at < cut].sort_values(["played_at", "play_id"]).iloc[-1]
        assert row["device"] == latest["device"] or (
            pd.isna(row["device"]) and pd.isna(latest["device"])
        )
        assert row["region"] == latest["region"]
    before = rows[pd.to_datetime(rows.snapshot_date) < pd.Timestamp(facts["switch_day"])]
    after = rows[pd.to_datetime(rows.snapshot_date) > pd.Timestamp(facts["switch_day"])]
    assert set(before["device"].dropna()).isdisjoint(set(after["device"].dropna()))


def test_the_model_trains_evaluates_and_drift_is_measured(ran) -> None:
    repo, _ = ran
    evaluate = json.loads((repo / "metrics/evaluate.json").read_text())
    assert 0.0 <= evaluate["roc_auc"] <= 1.0
    drift = json.loads((repo / "artifacts/drift/report.json").read_text())
    columns = drift["tables"]["activity"]["columns"]
    assert {"kind", "quantity", "unit_price", "seconds", "region", "device", "spend"} == set(
        columns
    )
    assert drift["tables"]["activity"]["current"]["partitions"] == 3


def test_predict_monitor_and_report_need_no_dataset_code(ran) -> None:
    from stages.contract.card import file_md5
    from stages.lib.cards import build_card
    from stages.lib.io import read_frame, write_metrics
    from stages.lib.params import load_params

    repo, _ = ran
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]

    def stage(name: str) -> None:
        argv = shlex.split(stages[name]["cmd"])
        assert importlib.import_module(argv[2]).main(argv[3:]) == 0, f"stage {name} failed"

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(repo)
        stage("export")
        # the card stage reads the data version from dvc.lock, which this in-process run has
        # not got: the card is built by the same function with a stated placeholder version
        write_metrics(
            "models/model_card.json",
            build_card(
                schema=load_schema("artifacts/features/feature_schema.json"),
                train=read_frame("artifacts/split/train.parquet"),
                params=load_params("params.yaml"),
                metrics=json.loads(Path("metrics/evaluate.json").read_text()),
                slices=json.loads(Path("artifacts/evaluate/slices.json").read_text()),
                model_file="models/model.skops",
                model_md5=file_md5(Path("models/model.skops")),
                landing_md5="no-dvc-lock-in-this-test",
                data_source="tests/e2e/test_second_dataset.py",
                onnx={"file": "models/model.onnx", "md5": file_md5(Path("models/model.onnx"))},
            ),
        )
        # the champion's files, as `evergreen champion` copies them (it also runs `dvc add`,
        # which this repository without git or DVC has no use for)
        from stages.cli.champion import BUNDLE, CHAMPION

        CHAMPION.mkdir(parents=True)
        for name, source in BUNDLE.items():
            shutil.copyfile(source, CHAMPION / name)
        for name in ("predict_set", "predict", "monitor", "report"):
            stage(name)
    predictions = pd.read_parquet(repo / "artifacts/predict/predictions.parquet")
    predict_set = pd.read_parquet(repo / "artifacts/predict_set/predict.parquet")
    assert predict_set.equals(pd.read_parquet(repo / "artifacts/features/predict.parquet"))
    assert sorted(predictions["user_id"]) == sorted(predict_set["user_id"])
    assert predictions["score"].between(0, 1).all()
    assert (predictions["decision"] == (predictions["score"] >= 0.5)).all()
    monitor = json.loads((repo / "artifacts/monitor/report.json").read_text())
    assert isinstance(monitor["retrain_recommended"], bool)
    assert monitor["served"]["status"] == "absent"
    page = (repo / "reports/report.html").read_text()
    # the dataset's own label, segments and value column (no entity attribute is numeric:
    # the trailing purchase amount over the longest window)
    assert "<h2>Lapsed-risk distribution</h2>" in page
    assert "<h3>region</h3>" in page and "<h3>device</h3>" in page
    assert "purchases_amount_4d" in page
