from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from stages.cli.gate import (
    Champion,
    GateConfig,
    Scores,
    judge,
    main,
    recorded_md5,
    score,
    score_champion,
)
from stages.contract.feature_schema import FeatureSchema, save_schema
from stages.lib.evaluation import EvaluateConfig, SliceSpec
from stages.lib.model_io import load_model, save_model
from stages.lib.training import ModelConfig, train_model
from tests.stages.test_evaluate import SCHEMA, make_frame

CFG = GateConfig(
    min_roc_auc=0.7,
    min_pr_auc=0.3,
    max_brier=0.2,
    max_regression=0.01,
    min_improvement=None,
    max_slice_regression=0.05,
    min_slice_rows=100,
)


def scores(roc_auc: float, *, pr_auc: float = 0.5, brier: float = 0.15, slices=None) -> Scores:
    return Scores({"roc_auc": roc_auc, "pr_auc": pr_auc, "brier": brier}, slices or {})


def cell(n: int, roc_auc: float | None) -> dict:
    return {"n": n, "positives": 10, "roc_auc": roc_auc, "pr_auc": 0.5, "f1": 0.5}


GOOD_SLICES = {"plan": {"basic": cell(400, 0.80), "premium": cell(300, 0.78)}}


@pytest.mark.parametrize(
    ("case", "challenger", "champion", "cfg", "blessed", "failed", "names"),
    [
        (
            "first run: absolutes only, all pass",
            scores(0.80),
            None,
            CFG,
            True,
            [],
            ["min_roc_auc", "min_pr_auc", "max_brier"],
        ),
        (
            "first run: an absolute floor fails",
            scores(0.65),
            None,
            CFG,
            False,
            ["min_roc_auc"],
            ["min_roc_auc", "min_pr_auc", "max_brier"],
        ),
        (
            "first run: brier above its ceiling",
            scores(0.80, brier=0.25),
            None,
            CFG,
            False,
            ["max_brier"],
            ["min_roc_auc", "min_pr_auc", "max_brier"],
        ),
        (
            "better than the champion",
            scores(0.85, slices=GOOD_SLICES),
            scores(0.80, slices=GOOD_SLICES),
            CFG,
            True,
            [],
            ["min_roc_auc", "min_pr_auc", "max_brier", "max_regression", "max_slice_regression"],
        ),
        (
            "worse beyond epsilon",
            scores(0.78),
            scores(0.80),
            CFG,
            False,
            ["max_regression"],
            ["min_roc_auc", "min_pr_auc", "max_brier", "max_regression", "max_slice_regression"],
        ),
        (
            "worse within epsilon",
            scores(0.795),
            scores(0.80),
            CFG,
            True,
            [],
            ["min_roc_auc", "min_pr_auc", "max_brier", "max_regression", "max_slice_regression"],
        ),
        (
            # 0.85 - 0.84 is 0.01000000000000001 in floats: exactly epsilon must pass
            "worse by exactly epsilon",
            scores(0.84),
            scores(0.85),
            CFG,
            True,
            [],
            ["min_roc_auc", "min_pr_auc", "max_brier", "max_regression", "max_slice_regression"],
        ),
        (
            "delta required and not met",
            scores(0.805),
            scores(0.80),
            GateConfig(max_regression=0.01, min_improvement=0.01),
            False,
            ["min_improvement"],
            ["max_regression", "min_improvement"],
        ),
        (
            "delta required and met",
            scores(0.82),
            scores(0.80),
            GateConfig(max_regression=0.01, min_improvement=0.01),
            True,
            [],
            ["max_regression", "min_improvement"],
        ),
        (
            "better on average, worse in one slice",
            scores(0.85, slices={"plan": {"basic": cell(400, 0.84), "premium": cell(300, 0.70)}}),
            scores(0.80, slices=GOOD_SLICES),
            CFG,
            False,
            ["max_slice_regression"],
            ["min_roc_auc", "min_pr_auc", "max_brier", "max_regression", "max_slice_regression"],
        ),
        (
            "a slice drop in a small slice is not judged",
            scores(0.85, slices={"plan": {"basic": cell(400, 0.84), "premium": cell(99, 0.50)}}),
            scores(0.80, slices=GOOD_SLICES),
            CFG,
            True,
            [],
            ["min_roc_auc", "min_pr_auc", "max_brier", "max_regression", "max_slice_regression"],
        ),
        (
            "a slice with one class (no roc_auc) is not judged",
            scores(0.85, slices={"plan": {"basic": cell(400, 0.84), "premium": cell(300, None)}}),
            scores(0.80, slices=GOOD_SLICES),
            CFG,
            True,
            [],
            ["min_roc_auc", "min_pr_auc", "max_brier", "max_regression", "max_slice_regression"],
        ),
        (
            "all thresholds off, no champion: nothing to fail",
            scores(0.10),
            None,
            GateConfig(max_regression=None),
            True,
            [],
            [],
        ),
    ],
)
def test_judge_table(
    case: str,
    challenger: Scores,
    champion: Scores | None,
    cfg: GateConfig,
    blessed: bool,
    failed: list[str],
    names: list[str],
) -> None:
    verdict = judge(challenger, champion, cfg)
    assert verdict.blessed is blessed, case
    assert [c.name for c in verdict.failed] == failed, case
    assert [c.name for c in verdict.checks] == names, case


def test_missing_champion_ref_is_judged_on_absolutes_only() -> None:
    # the regression bound would fail against any champion; without one it is not checked
    verdict = judge(scores(0.75), None, GateConfig(min_roc_auc=0.7, max_regression=0.0))
    assert verdict.blessed
    assert [c.name for c in verdict.checks] == ["min_roc_auc"]


def test_a_champion_that_cannot_be_scored_fails_the_gate() -> None:
    verdict = judge(scores(0.9), None, CFG, champion_problem="needs feature(s) ['x']")
    assert not verdict.blessed
    (check,) = verdict.failed
    assert (check.name, check.detail) == ("champion_comparable", "needs feature(s) ['x']")


def test_check_values_name_both_models_and_the_bound() -> None:
    verdict = judge(scores(0.78), scores(0.80), CFG)
    check = next(c for c in verdict.checks if c.name == "max_regression")
    assert (check.challenger, check.champion, check.threshold) == (0.78, 0.80, 0.01)
    assert "-0.02" in check.detail and "beyond" in check.detail
    slices = judge(
        scores(0.85, slices={"plan": {"basic": cell(400, 0.84), "premium": cell(300, 0.70)}}),
        scores(0.80, slices=GOOD_SLICES),
        CFG,
    )
    worst = next(c for c in slices.checks if c.name == "max_slice_regression")
    assert (worst.challenger, worst.champion) == (0.70, 0.78)
    assert "plan=premium" in worst.detail and "plan=basic" not in worst.detail


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"min_roc_auc": 1.5}, r"gate\.min_roc_auc"),
        ({"max_regression": -0.1}, r"gate\.max_regression"),
        ({"min_slice_rows": 0}, r"gate\.min_slice_rows"),
        ({"champion_ref": ""}, r"gate\.champion_ref"),
        ({"max_regresion": 0.1}, r"unknown key.*max_regresion"),
    ],
)
def test_bad_gate_config_is_named(raw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GateConfig.from_params(raw)


def test_gate_config_from_the_project_params(shop_params: dict) -> None:
    cfg = GateConfig.from_params(shop_params["gate"])
    assert cfg.champion_ref == "main"
    assert cfg.min_improvement is None
    assert 0 < cfg.max_regression < 0.1


def test_recorded_md5_reads_the_model_version_from_dvc_lock() -> None:
    lock = {
        "stages": {
            "train": {"outs": [{"path": "models/model.skops", "md5": "abc", "size": 1}]},
            "evaluate": {"outs": []},
        }
    }
    assert recorded_md5(lock, "models/model.skops") == "abc"
    assert recorded_md5(lock, "models/other.skops") is None
    assert recorded_md5({}, "models/model.skops") is None


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = ModelConfig("m", "logistic_regression", {"max_iter": 200})
    model = train_model(make_frame(400, seed=1), SCHEMA, cfg, seed=7)
    return save_model(model, tmp_path_factory.mktemp("gate") / "model.skops")


def _champion(model_path: Path, schema: FeatureSchema) -> Champion:
    return Champion("main", "0123456789abcdef", "md5", load_model(model_path), schema)


def test_champion_is_scored_on_its_own_features(fitted: Path) -> None:
    test = make_frame(300, seed=2).assign(extra=1.0)  # the current test set has more columns
    cfg = EvaluateConfig(slices=(SliceSpec("plan", "plan"),))
    got = score_champion(_champion(fitted, SCHEMA), test, "churn", cfg, source="test.parquet")
    expected = score(load_model(fitted), test, SCHEMA, "churn", cfg, source="test.parquet")
    assert got == expected
    assert set(got.slices["plan"]) == {"basic", "premium"}


def test_champion_needing_a_feature_the_test_set_lacks_is_named(fitted: Path) -> None:
    test = make_frame(300, seed=2).drop(columns="tenure")
    with pytest.raises(ValueError, match=r"needs feature\(s\) \['tenure'\], absent from test"):
        score_champion(
            _champion(fitted, SCHEMA), test, "churn", EvaluateConfig(), source="test.parquet"
        )


def _inputs(tmp_path: Path, fitted: Path, gate: dict) -> list[str]:
    test = make_frame(300, seed=2)
    test.to_parquet(tmp_path / "test.parquet")
    save_schema(SCHEMA, tmp_path / "feature_schema.json")
    params = {
        "gate": gate,
        "evaluate": {"threshold": 0.5, "slices": ["plan"]},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    # a fresh repository with no commit: no ref holds a champion
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    return [
        "--model",
        str(fitted),
        "--schema",
        str(tmp_path / "feature_schema.json"),
        "--test",
        str(tmp_path / "test.parquet"),
        "--params",
        str(tmp_path / "params.yaml"),
        "--repo",
        str(tmp_path),
        "--lock",
        str(tmp_path / "dvc.lock"),
    ]


def test_main_without_a_champion_judges_absolutes_and_is_deterministic(
    fitted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _inputs(tmp_path, fitted, {"min_roc_auc": 0.7, "max_regression": 0.0})
    assert main([*argv, "--out", str(tmp_path / "a.json")]) == 0
    out = capsys.readouterr().out
    assert "BLESSED" in out and "no champion" in out
    assert main([*argv, "--out", str(tmp_path / "b.json")]) == 0
    a = (tmp_path / "a.json").read_bytes()
    assert a == (tmp_path / "b.json").read_bytes()
    report = json.loads(a)
    assert report["blessed"] is True
    assert report["champion"] is None
    assert "git ref 'main' not found" in report["champion_missing"]
    assert [c["name"] for c in report["checks"]] == ["min_roc_auc"]
    assert len(report["challenger"]["model_md5"]) == 32
    assert a == (json.dumps(report, indent=2, sort_keys=True) + "\n").encode()


def test_main_exits_1_and_prints_the_failed_check(
    fitted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _inputs(tmp_path, fitted, {"min_roc_auc": 0.99})
    assert main([*argv, "--ref", "nosuch", "--out", str(tmp_path / "gate.json")]) == 1
    out = capsys.readouterr().out
    assert "NOT BLESSED" in out and "FAIL min_roc_auc" in out and "'nosuch'" in out
    report = json.loads((tmp_path / "gate.json").read_text())
    assert report["blessed"] is False
    assert report["checks"][0]["passed"] is False


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("model", r"model\.skops: model file not found"),
        ("params", r"unknown key\(s\) \['min_roc'\]"),
        ("test", r"test\.parquet: missing column\(s\) \['tenure'\]"),
    ],
)
def test_main_exits_2_on_bad_inputs(
    fitted: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    breakage: str,
    message: str,
) -> None:
    argv = _inputs(tmp_path, fitted, {"min_roc": 0.7} if breakage == "params" else {})
    if breakage == "model":
        argv[argv.index("--model") + 1] = str(tmp_path / "absent" / "model.skops")
    if breakage == "test":
        pd.read_parquet(tmp_path / "test.parquet").drop(columns="tenure").to_parquet(
            tmp_path / "test.parquet"
        )
    assert main([*argv, "--out", str(tmp_path / "gate.json")]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "gate.json").exists()


def test_main_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--no-such-option"])
    assert exc.value.code == 2
