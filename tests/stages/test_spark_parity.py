"""The same small lake through DuckDB and through Spark (local mode) gives the same tables.

One Spark session serves the whole test session (starting one costs ~10 s): the stages'
`SparkSession.builder.getOrCreate()` finds it. `pytest -m spark` runs these alone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from stages import features, prepare, validate
from stages.cli.simulate import main as simulate_main
from stages.lib import dataset, merge
from stages.lib.engine import EngineConfig, connect, map_tasks
from tests.conftest import write_params

pytestmark = pytest.mark.spark

SPARK = {
    "name": "pyspark",
    "spark": {
        "master": "local[2]",
        "conf": {
            "spark.sql.session.timeZone": "UTC",
            "spark.sql.shuffle.partitions": 2,
            "spark.default.parallelism": 2,
            "spark.ui.enabled": False,
            "spark.ui.showConsoleProgress": False,
            "spark.sql.adaptive.enabled": False,
        },
    },
}
KEYS = {
    "events": ["event_id"],
    "customers": ["customer_id"],
    "customers_versions": ["customer_id", "updated_at"],
}


@pytest.fixture(scope="session")
def spark_session():
    if shutil.which("java") is None and "JAVA_HOME" not in os.environ:
        pytest.fail("Spark needs a Java 17 runtime: install openjdk-17-jre-headless")
    con = connect(EngineConfig.from_params(SPARK))
    con._session.sparkContext.setLogLevel("ERROR")
    yield con
    con._session.stop()


@pytest.fixture(scope="session")
def lake_params(shop_params_file, tmp_path_factory) -> dict:
    params = yaml.safe_load(shop_params_file.read_text())
    params["simulate"] = {**params["simulate"], "initial_customers": 40, "signups_per_day": 1}
    # a day of this tiny lake holds a few customer rows: one bad row is over any threshold
    params["validate"] = {**params["validate"], "max_quarantine_fraction": 1.0}
    return params


@pytest.fixture(scope="session")
def validated(lake_params, tmp_path_factory) -> Path:
    """A 60-day simulated lake, validated once (with faults, so quarantine has rows)."""
    root = tmp_path_factory.mktemp("parity")
    params = write_params(lake_params, root / "params.yaml")
    lake = root / "lake"
    args = ["--lake", str(lake), "--params", str(params), "--seed", "7"]
    assert simulate_main([*args, "--start", "2026-01-01", "--days", "60", "--faults", "all"]) == 0
    out = root / "validated"
    assert (
        validate.main(
            [str(lake / "landing"), str(out), str(root / "v.json"), "--params", str(params)]
        )
        == 0
    )
    return out


def _params(lake_params: dict, path: Path, engine: dict | None) -> Path:
    return write_params({**lake_params, "engine": engine or {"name": "duckdb"}}, path)


def _frame(path: Path, keys: list[str]) -> pd.DataFrame:
    """A file's rows in key order, with the file's own (Arrow) types."""
    frame = pq.read_table(path).to_pandas(types_mapper=pd.ArrowDtype)
    return frame.sort_values(keys, kind="stable").reset_index(drop=True)


def _same_tables(a: Path, b: Path, keys: list[str]) -> None:
    assert pq.read_schema(a) == pq.read_schema(b), f"{a.name}: schemas differ"
    pd.testing.assert_frame_equal(_frame(a, keys), _frame(b, keys), check_exact=True)


def test_spark_reads_what_validation_counted(spark_session, validated):
    """Every valid row validate counted is in its partition's file as Spark reads it, and every
    quarantined row has its record: the counts hold on either engine."""
    metrics = json.loads((validated.parent / "v.json").read_text())
    assert metrics["rows_quarantined"] > 0  # the faults reached the quarantine
    spark = spark_session._session
    report = json.loads((validated / "report.json").read_text())
    for table in KEYS:
        if table not in report:
            continue
        counted = report[table]["partitions"]
        valid = spark.read.parquet(str(validated / table)).groupBy("_partition").count()
        seen = {str(r["_partition"]): r["count"] for r in valid.collect()}
        assert seen == {p: c["rows_valid"] for p, c in counted.items() if c["rows_valid"]}
        quarantine = spark.read.parquet(str(validated / "quarantine" / table))
        per = quarantine.select("partition", "source_file", "row").distinct()
        rows = {r["partition"]: r["count"] for r in per.groupBy("partition").count().collect()}
        expected = {p: c["rows_quarantined"] for p, c in counted.items() if c["rows_quarantined"]}
        # a partition quarantined whole has one record (no row number) for all its rows
        whole = {r["partition"] for r in quarantine.filter("row is null").collect()}
        assert {p: n for p, n in rows.items() if p not in whole} == {
            p: n for p, n in expected.items() if p not in whole
        }


def _parquet_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*.parquet")}


def _validate(lake_params: dict, root: Path, engine: dict | None, landing: Path) -> int:
    params = _params(lake_params, root / "params.yaml", engine)
    args = [str(landing), str(root / "out"), str(root / "v.json"), "--params", str(params)]
    return validate.main(args)


def test_validate_on_spark_writes_the_same_files(validated, lake_params, tmp_path):
    """Spark's tasks run the checks on the faulty lake: the same valid and quarantine files,
    byte for byte, the same metrics, report and manifest entries as the in-process run. Run
    as dvc.yaml runs it (`python -m`, its own Spark session): the tasks must find the module."""
    landing = validated.parent / "lake" / "landing"
    params = _params(lake_params, tmp_path / "params.yaml", SPARK)
    out = tmp_path / "out"
    cmd = ["-m", "stages.validate", landing, out, tmp_path / "v.json", "--params", params]
    done = subprocess.run([sys.executable, *map(str, cmd)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _parquet_files(out) == _parquet_files(validated)
    assert (tmp_path / "v.json").read_text() == (validated.parent / "v.json").read_text()
    assert (out / "report.json").read_text() == (validated / "report.json").read_text()
    entries = [
        json.loads((d / "manifest.json").read_text())["partitions"] for d in (out, validated)
    ]
    assert entries[0] == entries[1]


def test_validate_on_spark_fails_as_in_process(
    spark_session, validated, lake_params, tmp_path, capsys
):
    """Bad rows over the threshold fail the stage on Spark too, with the same report."""
    strict = {
        **lake_params,
        "validate": {**lake_params["validate"], "max_quarantine_fraction": 0.0},
    }
    landing = validated.parent / "lake" / "landing"
    errors = []
    for name, engine in (("duckdb", None), ("pyspark", SPARK)):
        (tmp_path / name).mkdir()
        assert _validate(strict, tmp_path / name, engine, landing) == 1
        errors.append(capsys.readouterr().err)
    assert "quarantined" in errors[0] and errors[0] == errors[1]


def test_spark_tasks_return_in_order_and_raise_as_themselves(spark_session):
    cfg = EngineConfig.from_params(SPARK)
    assert list(map_tasks(cfg, int, ["3", "1", "2"])) == [3, 1, 2]
    with pytest.raises(ValueError, match="invalid literal for int"):
        list(map_tasks(cfg, int, ["1", "x"]))


@pytest.fixture(scope="session")
def histories(spark_session, validated, lake_params, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("histories")
    out = {}
    for name, engine in (("duckdb", None), ("pyspark", SPARK)):
        params = _params(lake_params, root / f"{name}.yaml", engine)
        assert prepare.main([str(validated), str(root / name), "--params", str(params)]) == 0
        out[name] = root / name
    return out


def test_prepare_gives_the_same_histories(histories):
    for name, keys in KEYS.items():
        duck, spark = (
            histories["duckdb"] / f"{name}.parquet",
            histories["pyspark"] / f"{name}.parquet",
        )
        _same_tables(duck, spark, keys)
        # one writer for both engines and a total order: the very same bytes
        assert duck.read_bytes() == spark.read_bytes(), name
    counts = [json.loads((h / "counts.json").read_text()) for h in histories.values()]
    assert counts[0] == counts[1] and counts[0]["events"] > 500


def test_incremental_prepare_on_spark_equals_a_duckdb_rebuild(
    histories, validated, lake_params, tmp_path
):
    """Upserting the last days into a Spark-built history gives the DuckDB full build."""
    partial = tmp_path / "validated"
    for table in KEYS:
        if (validated / table).is_dir():
            (partial / table).mkdir(parents=True)
            for f in sorted((validated / table).glob("date=*.parquet"))[:-3]:
                shutil.copy(f, partial / table / f.name)
    params = _params(lake_params, tmp_path / "spark.yaml", SPARK)
    out = tmp_path / "history"
    assert prepare.main([str(partial), str(out), "--params", str(params)]) == 0
    for table in KEYS:
        if (validated / table).is_dir():
            for f in sorted((validated / table).glob("date=*.parquet"))[-3:]:
                shutil.copy(f, partial / table / f.name)
    config = dataset.dataset_from_params(lake_params["dataset"])
    run = merge.run_prepare(
        partial,
        out,
        config,
        merge.prepare_fingerprint(lake_params["dataset"]["tables"], config),
        EngineConfig.from_params(SPARK),
    )
    assert {p.mode for p in run.plans.values()} == {"append"}
    for name, keys in KEYS.items():
        _same_tables(histories["duckdb"] / f"{name}.parquet", out / f"{name}.parquet", keys)


def test_features_give_the_same_tables(histories, lake_params, tmp_path):
    lake_params = {**lake_params, "features": {**lake_params["features"], "min_history_days": 14}}
    outs = {}
    for name, engine in (("duckdb", None), ("pyspark", SPARK)):
        params = _params(lake_params, tmp_path / f"{name}.yaml", engine)
        out = tmp_path / name
        assert features.main([str(histories["duckdb"]), str(out), "--params", str(params)]) == 0
        outs[name] = out
    keys = ["snapshot_date", "customer_id"]
    for file in ("snapshots.parquet", "predict.parquet"):
        _same_tables(outs["duckdb"] / file, outs["pyspark"] / file, keys)
    snaps = pq.read_table(outs["duckdb"] / "snapshots.parquet").to_pandas()
    assert snaps["snapshot_date"].nunique() >= 2 and 0 < snaps["churn"].mean() < 1
    for file in ("summary.json", "feature_schema.json"):
        assert (outs["duckdb"] / file).read_text() == (outs["pyspark"] / file).read_text()


def test_local_days_on_spark_are_duckdbs(spark_session):
    """The features' local days (stages/lib/localtime.py) are plain arithmetic on both engines:
    New York timestamps across both changes of a year, and every local midnight's last second."""
    import datetime as dt

    import ibis

    from stages.lib.localtime import LocalDays

    grid = pd.date_range("2025-03-08", "2025-03-10", freq="20min").append(
        pd.date_range("2025-11-01", "2025-11-03", freq="20min")
    )
    frame = pd.DataFrame({"t": grid.astype("datetime64[us]")})
    days = LocalDays.between("America/New_York", dt.datetime(2025, 1, 1), dt.datetime(2026, 1, 1))
    # a memtable: a temporary view on Spark, no managed table left in a warehouse folder
    table = ibis.memtable(frame)
    query = table.select(n=days.day_number(table.t)).order_by("n")
    on_spark = spark_session.to_pyarrow(query)
    on_duck = ibis.duckdb.connect().to_pyarrow(query)
    assert on_spark.column("n").to_pylist() == on_duck.column("n").to_pylist()
