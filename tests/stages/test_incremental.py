"""Incremental validate and prepare: each run does only the increment, and the result is the one
a rebuild from scratch gives, byte for byte (DESIGN.md, principles 2 and 3)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from stages.lib import incremental
from stages.lib.incremental import StatCache, content_hash, remove_temp_files
from stages.lib.merge import CODE_FILES as PREPARE_CODE
from stages.lib.merge import plan_merge
from stages.lib.profile_store import CODE_FILES as PROFILES_CODE
from stages.lib.validation import CODE_FILES as VALIDATE_CODE
from stages.lib.validation import plan_partitions
from stages.prepare import main as prepare_main
from stages.validate import main as validate_main
from tests.conftest import customers_frame, events_frame, write_params, write_partition

ROOT = Path(__file__).resolve().parents[2]


# --- the pure planning ------------------------------------------------------------------------


def test_plan_partitions_validates_new_and_changed_keeps_unchanged_drops_gone():
    sources = {"events": {"d1": "a", "d2": "B", "d4": "d"}}
    done = {"events": {"d1": "a", "d2": "b", "d3": "c"}, "old_table": {"d1": "x"}}
    plan = plan_partitions(sources, done)
    assert plan.todo == (("events", "d2"), ("events", "d4"))
    assert plan.keep == (("events", "d1"),)
    assert plan.drop == (("events", "d3"), ("old_table", "d1"))


def test_plan_merge_appends_only_partitions_after_the_merged_ones():
    merged = {"2026-01-01": "a", "2026-01-02": "b"}
    assert plan_merge(merged, merged).mode == "keep"
    append = plan_merge(merged, {**merged, "2026-01-04": "d", "2026-01-03": "c"})
    assert (append.mode, append.partitions) == ("append", ("2026-01-03", "2026-01-04"))
    everything = ("2026-01-01", "2026-01-02")
    for current, why in [
        ({"2026-01-01": "a", "2026-01-02": "B"}, "2026-01-02 changed"),
        ({"2026-01-02": "b"}, "2026-01-01 removed"),
        ({**merged, "2025-12-31": "z"}, "2025-12-31 arrived after 2026-01-02"),
    ]:
        plan = plan_merge(merged, current)
        assert plan.mode == "rebuild" and why in plan.reason
        assert plan.partitions == tuple(sorted(current))
    assert plan_merge(None, merged).partitions == everything


def test_code_files_are_the_stage_deps_in_dvc_yaml():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, out, code in (
        ("validate", "validate", VALIDATE_CODE),
        ("prepare", "prepare", PREPARE_CODE),
        ("profiles", "profile", PROFILES_CODE),
    ):
        deps = {d for d in stages[name]["deps"] if d.startswith("stages/")}
        assert deps == {f"stages/{f}" for f in code}, name
        assert stages[name]["outs"][0][f"artifacts/{out}"]["persist"] is True


# --- content hashes ---------------------------------------------------------------------------


def test_stat_cache_rehashes_a_file_rewritten_with_the_same_size(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"aaaa")
    old = time.time_ns() - 10 * incremental.RACY_NS
    os.utime(path, ns=(old, old))
    cache = StatCache()
    first = cache.stamp(path, "f")
    assert first is not None and first.size == 4
    # cached (old enough), then the same size and mtime but new content: the inode differs
    kept = StatCache(cache.to_json())
    assert "f" in cache.to_json() and kept.stamp(path, "f") == first
    tmp = tmp_path / "g.bin"
    tmp.write_bytes(b"bbbb")
    os.utime(tmp, ns=(old, old))
    os.replace(tmp, path)
    assert StatCache(cache.to_json()).stamp(path, "f").md5 != first.md5
    assert StatCache().stamp(tmp_path / "missing", "m") is None


def test_a_just_written_file_is_not_cached(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"x")
    cache = StatCache()
    cache.stamp(path, "f")
    assert cache.to_json() == {}  # racy: the next run reads it again


def test_content_hash_depends_on_names_sizes_and_content(tmp_path):
    a = incremental.Stamp(1, "m1")
    assert content_hash({"x": a}) != content_hash({"y": a})
    assert content_hash({"x": a}) != content_hash({"x": incremental.Stamp(1, "m2")})
    assert content_hash({"x": a, "y": a}) == content_hash({"y": a, "x": a})


def test_remove_temp_files_leaves_real_files(tmp_path):
    (tmp_path / "t").mkdir()
    stray = tmp_path / "t" / ".date=2026-01-01.parquet.tmp-123"
    stray.write_bytes(b"half")
    real = tmp_path / "t" / "date=2026-01-01.parquet"
    real.write_bytes(b"whole")
    assert remove_temp_files(tmp_path, tmp_path / "absent") == [stray]
    assert real.exists()


# --- validate and prepare, run as the stage runs ----------------------------------------------


def _events(day: str, ids, bad: int = 0):
    rows = [(i, 10 + i % 3, f"{day} 10:00", "session", None) for i in ids]
    rows += [(900 + i, 10, f"{day} 11:00", "teleport", None) for i in range(bad)]
    return events_frame(rows)


def _customers(day: str, plan: str = "basic"):
    return customers_frame(
        [(c, "2025-12-01", "DE", plan, "ads", 9.0, f"{day} 00:00") for c in (10, 11, 12)]
    )


def _lake(root: Path, days: int) -> None:
    for d in range(1, days + 1):
        day = f"2026-01-{d:02d}"
        write_partition(root, "events", day, _events(day, range(d * 10, d * 10 + 10)))
        write_partition(root, "customers", day, _customers(day))


class Stages:
    """validate + prepare into `work/`, as dvc.yaml runs them."""

    def __init__(self, tmp: Path, params: Path, name: str = "work") -> None:
        self.landing, self.params = tmp / "data/landing", params
        self.base = tmp / name
        self.validated, self.history = self.base / "validate", self.base / "prepare"
        self.metrics = self.base / "validation.json"

    def validate(self) -> int:
        args = [self.landing, self.validated, self.metrics, "--params", self.params]
        return validate_main([str(a) for a in args])

    def prepare(self) -> int:
        args = [self.validated, self.history, "--params", self.params]
        return prepare_main([str(a) for a in args])

    def both(self) -> None:
        assert self.validate() == 0
        assert self.prepare() == 0

    def files(self) -> dict[str, bytes]:
        """Every output file's bytes, manifests included (stat caches live beside them)."""
        out = {}
        for path in sorted(self.base.rglob("*")):
            if path.is_file() and not path.name.endswith(".stat-cache.json"):
                out[path.relative_to(self.base).as_posix()] = path.read_bytes()
        return out


def _rebuild(tmp: Path, params: Path) -> Stages:
    """A from-scratch run on the same landing zone."""
    fresh = Stages(tmp, params, name="fresh")
    shutil.rmtree(fresh.base, ignore_errors=True)
    fresh.both()
    return fresh


@pytest.fixture
def lake(tmp_path, shop_params) -> Stages:
    params = write_params(shop_params, tmp_path / "params.yaml")
    _lake(tmp_path / "data", days=4)
    stages = Stages(tmp_path, params)
    stages.both()
    return stages


def test_a_new_day_is_validated_and_upserted_alone(lake, tmp_path, capsys):
    before = {p: p.stat().st_mtime_ns for p in lake.validated.rglob("date=*.parquet")}
    write_partition(tmp_path / "data", "events", "2026-01-05", _events("2026-01-05", [3, 50]))
    write_partition(
        tmp_path / "data", "customers", "2026-01-05", _customers("2026-01-05", "premium")
    )
    capsys.readouterr()
    lake.both()
    out = capsys.readouterr().out
    assert "2 partition(s) validated, 8 unchanged, 0 removed" in out
    assert "events: 1 new partition(s) upserted" in out
    # the old partitions' outputs were not rewritten
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())
    assert lake.files() == _rebuild(tmp_path, lake.params).files()
    events = pq.read_table(lake.history / "events.parquet").to_pandas()
    assert events["event_id"].is_monotonic_increasing and events["event_id"].is_unique
    resent = events.set_index("event_id").loc[3]
    assert str(resent["_partition"]) == "2026-01-05"  # the re-sent row is the latest copy
    metrics = json.loads(lake.metrics.read_text())
    assert metrics["rows_in"] == 4 * 10 + 2 + 5 * 3
    report = json.loads((lake.validated / "report.json").read_text())
    assert {
        k: report["events"]["partitions"]["2026-01-05"][k]
        for k in ("rows_in", "rows_valid", "rows_quarantined")
    } == {
        "rows_in": 2,
        "rows_valid": 2,
        "rows_quarantined": 0,
    }


def test_a_second_run_does_nothing(lake, capsys):
    before = lake.files()
    capsys.readouterr()
    lake.both()
    out = capsys.readouterr().out
    assert "0 partition(s) validated, 8 unchanged" in out
    assert "prepare events: unchanged" in out
    assert lake.files() == before


def test_a_changed_partition_replaces_its_outputs_and_rebuilds_the_history(lake, tmp_path, capsys):
    day = "2026-01-02"
    write_partition(tmp_path / "data", "events", day, _events(day, range(20, 29), bad=1))
    capsys.readouterr()
    lake.both()
    out = capsys.readouterr().out
    assert "1 partition(s) validated, 7 unchanged" in out
    assert "events: rebuilt from 4 partitions (partition 2026-01-02 changed)" in out
    assert (lake.validated / "quarantine/events/date=2026-01-02.parquet").exists()
    assert lake.files() == _rebuild(tmp_path, lake.params).files()

    # and back: the quarantine file of the partition goes with the bad row
    write_partition(tmp_path / "data", "events", "2026-01-02", _events("2026-01-02", [20]))
    lake.both()
    assert not (lake.validated / "quarantine/events/date=2026-01-02.parquet").exists()
    assert lake.files() == _rebuild(tmp_path, lake.params).files()


def test_a_deleted_partition_takes_its_outputs_and_report_entry_along(lake, tmp_path, capsys):
    write_partition(tmp_path / "data", "events", "2026-01-04", _events("2026-01-04", [40], bad=5))
    assert lake.validate() == 1  # 5 of 6 rows quarantined: over the threshold
    assert "events/date=2026-01-04" in capsys.readouterr().err
    # nothing changed, and a rerun still fails: an incremental run forgets no problem
    assert lake.validate() == 1
    assert (lake.validated / "quarantine/events/date=2026-01-04.parquet").exists()
    shutil.rmtree(tmp_path / "data/landing/events/date=2026-01-04")
    capsys.readouterr()
    assert lake.validate() == 0
    assert "0 partition(s) validated, 7 unchanged, 1 removed" in capsys.readouterr().out
    assert not (lake.validated / "events/date=2026-01-04.parquet").exists()
    assert not (lake.validated / "quarantine/events/date=2026-01-04.parquet").exists()
    report = json.loads((lake.validated / "report.json").read_text())
    assert sorted(report["events"]["partitions"]) == ["2026-01-01", "2026-01-02", "2026-01-03"]
    assert report["events"]["totals"]["rows_in"] == 30
    partitions = sum(t["totals"]["partitions"] for t in report.values())
    assert json.loads(lake.metrics.read_text())["partitions"] == partitions
    assert lake.prepare() == 0
    assert lake.files() == _rebuild(tmp_path, lake.params).files()


def test_a_rows_tasks_key_is_part_of_the_merges_fingerprint(tmp_path):
    """A rows task's upsert key is `task.key`, outside `dataset.tables`: another key keeps
    other rows (a fraud lake keyed on card_id instead of transaction_id: 34,001 rows, not
    49,997), so it must rebuild the history, not keep the one merged on the old key."""
    import yaml

    from stages.lib.dataset import dataset_from_params
    from stages.lib.merge import prepare_fingerprint
    from stages.lib.params import compose_params
    from tests.conftest import ROOT

    raw = yaml.safe_load(
        compose_params(ROOT / "conf", tmp_path / "p.yaml", ["dataset=bikes"]).read_text()
    )["dataset"]

    def fp(changes: dict) -> str:
        changed = {**raw, "task": {**raw["task"], **changes}}
        return prepare_fingerprint(changed["tables"], dataset_from_params(changed))

    assert fp({"key": "casual"}) != fp({})
    assert fp({"surrogate_key": True, "key": "row_id"}) != fp({})
    assert fp({"period_days": 14}) == fp({})  # what the merge does not read changes nothing


def test_changed_params_rebuild_everything(lake, tmp_path, shop_params, capsys):
    shop_params["validate"]["max_quarantine_fraction"] = 0.5
    write_params(shop_params, lake.params)
    capsys.readouterr()
    lake.both()
    out = capsys.readouterr().out
    assert "8 partition(s) validated, 0 unchanged" in out
    assert "code, params or library versions changed" in out
    assert lake.files() == _rebuild(tmp_path, lake.params).files()


def test_damaged_or_stray_outputs_are_recomputed_or_removed(lake, tmp_path, capsys):
    expected = lake.files()
    (lake.validated / "events/date=2026-01-02.parquet").write_bytes(b"not what was written")
    (lake.validated / "events/date=2025-12-31.parquet").write_bytes(b"written after the manifest")
    stray = lake.validated / "events" / ".date=2026-01-04.parquet.tmp-99999"
    stray.write_bytes(b"half a file")
    (lake.history / "customers_versions.parquet").unlink()
    capsys.readouterr()
    lake.both()
    out = capsys.readouterr().out
    assert "1 partition(s) validated, 7 unchanged" in out
    assert "customers: rebuilt" in out and "events: unchanged" in out
    assert lake.files() == expected
    assert not stray.exists()


def test_prepare_without_validated_partitions_names_the_table(tmp_path, shop_params, capsys):
    params = write_params(shop_params, tmp_path / "params.yaml")
    rc = prepare_main([str(tmp_path / "nothing"), str(tmp_path / "h"), "--params", str(params)])
    assert rc == 1
    assert "events: no validated partitions" in capsys.readouterr().err
