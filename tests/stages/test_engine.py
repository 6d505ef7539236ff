from __future__ import annotations

import ibis
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stages.lib import engine
from stages.lib.engine import EngineConfig, connect, write_parquet


def test_config_from_params_and_its_errors():
    cfg = EngineConfig.from_params(
        {"name": "pyspark", "spark": {"master": "local[1]", "conf": {"spark.ui.enabled": False}}}
    )
    assert cfg.name == "pyspark" and cfg.spark.master == "local[1]"
    assert cfg.spark.conf == {"spark.ui.enabled": False}
    assert EngineConfig.from_params(None) == EngineConfig()
    with pytest.raises(ValueError, match=r"engine\.name: 'spark' is not one of duckdb, pyspark"):
        EngineConfig.from_params({"name": "spark"})
    with pytest.raises(ValueError, match=r"engine\.memory: unknown key \(known: .*memory_limit"):
        EngineConfig.from_params({"memory": "1GB"})
    with pytest.raises(ValueError, match=r"engine\.spark\.url: unknown key \(known: .*remote"):
        EngineConfig.from_params({"spark": {"url": "sc://x"}})


def test_duckdb_gets_its_memory_limit_spill_folder_and_threads(tmp_path):
    spill = tmp_path / "spill"
    con = connect(EngineConfig(memory_limit="300MB", temp_directory=str(spill), threads=1))
    settings = con.raw_sql(
        "select current_setting('memory_limit'), current_setting('temp_directory'), "
        "current_setting('threads')"
    ).fetchone()
    assert settings[0] in ("286.1 MiB", "300.0 MB")  # DuckDB prints it in its own unit
    assert settings[1] == str(spill) and spill.is_dir()
    assert settings[2] == 1


def _table(n: int) -> pa.Table:
    return pa.table(
        {
            "id": pa.array(range(n), pa.int64()),
            "name": pa.array([None if i % 7 == 0 else f"n{i % 13}" for i in range(n)]),
            "value": pa.array([i / 3 for i in range(n)], pa.float64()),
        }
    )


@pytest.mark.parametrize("n", [0, 999, 2500])
def test_streamed_file_has_the_bytes_of_one_written_whole(tmp_path, monkeypatch, n):
    # small row groups, so 2500 rows cross two group boundaries and several engine batches
    monkeypatch.setattr(engine, "ROW_GROUP_ROWS", 1000)
    table = _table(n)
    con = ibis.duckdb.connect()
    expr = ibis.memtable(table).order_by("id")
    rows = write_parquet(con, expr, tmp_path / "streamed.parquet", table.schema)
    pq.write_table(table, tmp_path / "whole.parquet", row_group_size=1000, **engine.PARQUET_OPTIONS)
    assert rows == n
    assert (tmp_path / "streamed.parquet").read_bytes() == (tmp_path / "whole.parquet").read_bytes()
    assert pq.ParquetFile(tmp_path / "streamed.parquet").metadata.num_row_groups == max(
        1, -(-n // 1000)
    )
    assert not list(tmp_path.glob(".*tmp-*"))


def test_a_failing_query_leaves_no_file(tmp_path):
    con = ibis.duckdb.connect()
    # the cast fails while the result streams, after the writer opened its temporary file
    bad = ibis.memtable({"x": ["1"] * 50_000 + ["a"]}).select(x=ibis._.x.cast("int64"))
    with pytest.raises(Exception, match=r"(?i)could not convert string 'a'"):
        write_parquet(con, bad, tmp_path / "out.parquet", pa.schema([("x", pa.int64())]))
    assert list(tmp_path.iterdir()) == []
