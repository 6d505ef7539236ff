from __future__ import annotations

import json
import re
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import (
    brier_score_loss,
    mean_absolute_error,
    r2_score,
    roc_auc_score,
)

from stages.cli.gate import (
    Champion,
    GateConfig,
    NotComparable,
    Rows,
    Scores,
    judge,
    main,
    recorded_md5,
    score,
    score_champion,
)
from stages.contract.feature_schema import FeatureSchema, save_schema
from stages.lib.bootstrap import (
    bootstrap,
    brier,
    detectable_difference,
    mae,
    paired_bootstrap,
    r2,
    resample_counts,
    rmse,
    roc_auc,
    weighted,
)
from stages.lib.evaluation import EvaluateConfig, SliceSpec, score_metrics
from stages.lib.model_io import load_model, save_model
from stages.lib.regression import regression_metrics
from stages.lib.training import ModelConfig, train_model
from tests.stages.test_evaluate import SCHEMA, make_frame

SEED = 7
N = 3000
CFG = GateConfig(max_regression=0.01, max_slice_regression=0.05, min_slice_rows=100)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def logit(p: np.ndarray) -> np.ndarray:
    return np.log(p / (1.0 - p))


def scored(y: np.ndarray, p: np.ndarray, slices: dict | None = None) -> Scores:
    """A classifier's Scores with its rows, as `score` builds them."""
    metrics = score_metrics(y.astype("int64"), p, 0.5)
    return Scores(metrics, {}, False, Rows(y.astype("float64"), p, slices or {}))


def regressed(y: np.ndarray, p: np.ndarray, slices: dict | None = None) -> Scores:
    return Scores(regression_metrics(y, p), {}, True, Rows(y, p, slices or {}))


@pytest.fixture(scope="module")
def world() -> dict[str, np.ndarray]:
    """Churn driven by x; models that see x through more or less noise (the champion: sd 1)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=N)
    y = (rng.random(N) < sigmoid(-1.0 + 1.5 * x)).astype("float64")

    def seeing(noise: float) -> np.ndarray:
        return sigmoid(-1.0 + 1.5 * x + rng.normal(size=N) * noise)

    champion = seeing(1.0)
    better, worse = seeing(0.3), seeing(2.0)
    # the champion's own scores, slightly blurred: a hair worse, well within the noise
    slightly = sigmoid(logit(champion) + rng.normal(size=N) * 0.15)
    return {"y": y, "champion": champion, "better": better, "worse": worse, "slightly": slightly}


def vs_champion(world: dict, name: str, cfg: GateConfig = CFG):
    return judge(scored(world["y"], world[name]), scored(world["y"], world["champion"]), cfg)


def check(verdict, name: str):
    return next(c for c in verdict.checks if c.name == name)


def test_a_test_split_with_a_handful_of_positives_is_not_judged(world) -> None:
    """4 positives among 3,000 rows: whatever the scores, no interval says anything (a fraud
    lake's first model was blessed against the baseline on 4); with 10 of each class it is
    judged as usual."""
    rng = np.random.default_rng(1)
    y = np.zeros(N)
    y[rng.choice(N, 4, replace=False)] = 1
    p = np.clip(y * 0.6 + rng.random(N) * 0.3, 0, 1)
    for champion in (None, scored(y, rng.random(N))):
        verdict = judge(scored(y, p), champion, CFG)
        assert not verdict.blessed and [c.name for c in verdict.checks] == ["test_class_rows"]
        assert "4 positive and 2996 negative rows" in verdict.checks[0].detail
    y[rng.choice(np.flatnonzero(y == 0), 6, replace=False)] = 1
    p = np.clip(y * 0.6 + rng.random(N) * 0.3, 0, 1)
    assert "test_class_rows" not in [c.name for c in judge(scored(y, p), None, CFG).checks]
    # a regression has no classes; the bound is a params key like the others
    assert judge(regressed(world["y"], world["champion"]), None, CFG).checks
    with pytest.raises(ValueError, match=r"gate\.min_test_class_rows: 0 is not >= 1"):
        GateConfig(min_test_class_rows=0)


# --- known answers against a champion -----------------------------------------------------------


def test_two_identical_models_have_a_zero_interval_and_are_blessed(world: dict) -> None:
    verdict = judge(
        scored(world["y"], world["champion"]), scored(world["y"], world["champion"]), CFG, seed=1
    )
    assert verdict.blessed
    got = check(verdict, "max_regression")
    assert (got.difference, got.ci_low, got.ci_high) == (0.0, 0.0, 0.0)
    assert got.challenger == got.champion
    assert "identical to the champion" in got.detail
    # not better, though: an improvement requirement refuses it
    strict = replace_cfg(min_improvement=0.005)
    assert [c.name for c in judge(*_same(world), strict).failed] == ["min_improvement"]


def _same(world: dict) -> tuple[Scores, Scores]:
    return scored(world["y"], world["champion"]), scored(world["y"], world["champion"])


def replace_cfg(**changes) -> GateConfig:
    from dataclasses import replace

    return replace(CFG, **changes)


def test_a_clearly_better_model_is_blessed_with_ci_low_above_zero(world: dict) -> None:
    verdict = vs_champion(world, "better", replace_cfg(min_improvement=0.01))
    assert verdict.blessed, verdict.failed
    got = check(verdict, "max_regression")
    assert got.difference > 0.03 and got.ci_low > 0.01 and got.ci_high > got.difference
    assert got.confidence == 0.95 and 0 < got.detectable < got.difference
    assert "better than the champion at 95%" in got.detail
    assert check(verdict, "min_improvement").passed
    # the point estimate is the difference of the two models' ROC AUC on the whole test set
    y = world["y"]
    expected = roc_auc_score(y, world["better"]) - roc_auc_score(y, world["champion"])
    assert got.difference == pytest.approx(expected, abs=1e-6)


def test_a_slightly_worse_model_within_noise_is_not_distinguishable(world: dict) -> None:
    verdict = vs_champion(world, "slightly")
    got = check(verdict, "max_regression")
    assert got.difference < 0 and got.ci_low < 0 < got.ci_high
    assert "not distinguishable from the champion" in got.detail
    assert 0 < got.detectable < 0.01 and "inconclusive" not in got.detail
    # non-inferiority within the tolerance: blessed
    assert got.ci_low >= -0.01 and verdict.blessed
    # with no tolerance, or a required gain, the same model is refused; with no tolerance
    # the refusal is inconclusive (the model is not shown worse either) and says so
    strict = vs_champion(world, "slightly", replace_cfg(max_regression=0.0))
    assert [c.name for c in strict.failed] == ["max_regression"]
    assert "inconclusive: not shown worse than +0.0 either" in strict.failed[0].detail
    strict = vs_champion(world, "slightly", replace_cfg(min_improvement=0.001))
    assert [c.name for c in strict.failed] == ["min_improvement"]


def test_a_clearly_worse_model_is_refused(world: dict) -> None:
    verdict = vs_champion(world, "worse")
    assert not verdict.blessed
    got = check(verdict, "max_regression")
    assert got.ci_high < 0 and got.ci_low < -0.01
    assert "worse than the champion at 95%" in got.detail
    assert "ci_low" in got.detail and "< -0.01" in got.detail
    assert "inconclusive" not in got.detail  # shown worse beyond the tolerance
    # a wide enough tolerance lets it through: the bound, not the sign, decides
    assert vs_champion(world, "worse", replace_cfg(max_regression=0.2)).blessed


def test_a_bound_met_exactly_passes(world: dict) -> None:
    # the low end as written in gate.json (6 digits) is what is judged: a tolerance equal to
    # it passes, one a millionth smaller fails
    low = check(vs_champion(world, "slightly"), "max_regression").ci_low
    assert low < 0
    assert vs_champion(world, "slightly", replace_cfg(max_regression=-low)).blessed
    assert not vs_champion(world, "slightly", replace_cfg(max_regression=-low - 1e-6)).blessed


def test_the_interval_is_seeded(world: dict) -> None:
    a = check(judge(*_pair(world), CFG, seed=1), "max_regression")
    b = check(judge(*_pair(world), CFG, seed=1), "max_regression")
    c = check(judge(*_pair(world), CFG, seed=2), "max_regression")
    assert a == b
    assert a.difference == c.difference and (a.ci_low, a.ci_high) != (c.ci_low, c.ci_high)


def _pair(world: dict) -> tuple[Scores, Scores]:
    return scored(world["y"], world["slightly"]), scored(world["y"], world["champion"])


def test_more_resamples_or_a_higher_confidence_widen_nothing_but_the_interval(world) -> None:
    base = check(vs_champion(world, "slightly"), "max_regression")
    wide = check(vs_champion(world, "slightly", replace_cfg(confidence=0.99)), "max_regression")
    assert wide.difference == base.difference
    assert wide.ci_low < base.ci_low and wide.ci_high > base.ci_high
    assert wide.detectable > base.detectable


# --- slices -------------------------------------------------------------------------------------


def _night_world(night_rows: int, blur: float) -> tuple[Scores, Scores]:
    """A challenger better than the champion overall, worse at night (its scores there are
    the champion's, blurred)."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=N)
    y = (rng.random(N) < sigmoid(-1.0 + 1.5 * x)).astype("float64")
    champion = sigmoid(-1.0 + 1.5 * x + rng.normal(size=N))
    challenger = sigmoid(-1.0 + 1.5 * x + rng.normal(size=N) * 0.3)
    night = np.arange(N) < night_rows
    challenger[night] = sigmoid(logit(champion[night]) + rng.normal(size=night_rows) * blur)
    hours = {"hour": np.where(night, "night", "day")}
    return scored(y, challenger, hours), scored(y, champion, hours)


def test_a_small_noisy_slice_does_not_refuse_a_model_better_overall() -> None:
    verdict = judge(*_night_world(150, 1.5), CFG)
    assert verdict.blessed, verdict.failed
    assert check(verdict, "max_regression").ci_low > 0
    night = next(s for s in verdict.slices if s["value"] == "night")
    # worse by more than the slice tolerance as a point estimate (the old rule refused it),
    # but 150 rows cannot say so with confidence
    assert night["n"] == 150 and night["difference"] < -0.05
    assert night["ci_low"] < -0.05 < night["ci_high"] and not night["harmful"]
    got = check(verdict, "max_slice_regression")
    assert got.passed and got.difference == night["difference"]
    assert "least favourable: hour=night" in got.detail
    assert night["detectable"] > 0.05  # the slice cannot detect a drop of the tolerance's size
    # the same slice judged by the overall non-inferiority rule would refuse the model
    assert night["ci_low"] < -CFG.max_regression


def test_a_large_slice_confidently_worse_refuses_the_model() -> None:
    verdict = judge(*_night_world(1200, 6.0), CFG)
    assert "max_slice_regression" in [c.name for c in verdict.failed]
    got = check(verdict, "max_slice_regression")
    assert got.ci_high < -0.05
    assert "1 of 2 slice(s) worse than the champion beyond 0.05" in got.detail
    assert "hour=night" in got.detail and "hour=day" not in got.detail
    assert [s["value"] for s in verdict.slices if s["harmful"]] == ["night"]


def test_slices_too_small_or_with_too_few_of_a_class_are_listed_not_judged(world) -> None:
    y = world["y"]
    plan = np.where(np.arange(N) < 99, "tiny", "big")
    # a slice of 200 rows holding only 5 positives
    rare = np.flatnonzero(y == 1)[:5].tolist() + np.flatnonzero(y == 0)[:195].tolist()
    country = np.full(N, "xx", dtype=object)
    country[rare] = "rare"
    slices = {"plan": plan, "country": country.astype(str)}
    verdict = judge(
        scored(y, world["worse"], slices), scored(y, world["champion"], slices), CFG, seed=1
    )
    listed = {(s["slice"], s["value"]): s for s in verdict.slices}
    assert not listed["plan", "tiny"]["judged"]
    assert listed["plan", "tiny"]["note"] == "fewer than 100 rows"
    assert not listed["country", "rare"]["judged"]
    assert listed["country", "rare"]["note"] == "fewer than 10 rows of a class"
    assert listed["plan", "big"]["judged"] and listed["country", "xx"]["judged"]
    assert "2 slice(s) too small to judge" in check(verdict, "max_slice_regression").detail
    one = {"plan": np.full(N, "a")}
    none = judge(
        scored(y, world["worse"], one),
        scored(y, world["champion"], one),
        replace_cfg(min_slice_rows=N + 1),
    )
    got = check(none, "max_slice_regression")
    assert got.passed and got.detail.startswith("no slice with >= 3001 rows")


# --- no champion: the naive baseline ------------------------------------------------------------


def _weak_world(signal: float, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated probabilities of a weak signal, and labels drawn from them."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=N)
    p = sigmoid(-1.0 + signal * x)
    return (rng.random(N) < p).astype("float64"), p


def test_without_a_champion_a_model_that_beats_the_base_rate_is_blessed() -> None:
    y, p = _weak_world(0.66)
    verdict = judge(scored(y, p), None, CFG)
    assert verdict.blessed, verdict.failed
    assert [c.name for c in verdict.checks] == ["baseline_roc_auc", "baseline_brier"]
    auc, brier_check = verdict.checks
    # a modest first model, below the old global floor of 0.70
    assert auc.challenger == pytest.approx(0.657, abs=0.001)
    assert auc.baseline == 0.5 and auc.ci_low > 0 and auc.champion is None
    rate = y.mean()
    assert brier_check.baseline == pytest.approx(rate * (1 - rate), abs=1e-6)
    brier_gain = rate * (1 - rate) - brier_score_loss(y, p)
    assert brier_check.difference == pytest.approx(brier_gain, abs=1e-6)
    assert brier_check.passed and "base rate" in brier_check.detail
    # the old global floor still works when a dataset sets it
    floored = judge(scored(y, p), None, replace_cfg(min_roc_auc=0.7))
    assert [c.name for c in floored.failed] == ["min_roc_auc"]


def test_without_a_champion_random_scores_are_refused() -> None:
    y, _ = _weak_world(0.72)
    noise = np.random.default_rng(11).random(N)
    verdict = judge(scored(y, noise), None, CFG)
    assert not verdict.blessed
    auc = check(verdict, "baseline_roc_auc")
    assert auc.ci_low <= 0 < auc.ci_high and not auc.passed
    assert "not distinguishable from the baseline" in auc.detail
    # uniform scores are far from the base rate: their Brier is confidently worse
    harm = check(verdict, "baseline_brier")
    assert harm.ci_high < 0 and not harm.passed and "must not be worse" in harm.detail
    # the constant itself does not beat itself
    constant = np.full(N, y.mean())
    same = check(judge(scored(y, constant), None, CFG), "baseline_roc_auc")
    assert (same.difference, same.ci_low, same.ci_high, same.passed) == (0.0, 0.0, 0.0, False)


def test_without_a_champion_brier_is_a_harm_test() -> None:
    y, p = _weak_world(0.66)
    # a small gain in Brier, inside its noise, does not refuse a model that ranks well...
    few = slice(0, 600)
    verdict = judge(scored(y[few], p[few]), None, CFG)
    auc, harm = verdict.checks
    assert auc.ci_low > 0 and harm.ci_low < 0 <= harm.ci_high
    assert verdict.blessed
    # ...but probabilities confidently worse than the base rate do: the same ranking,
    # overconfident
    overconfident = sigmoid(4 * logit(p))
    verdict = judge(scored(y, overconfident), None, CFG)
    assert check(verdict, "baseline_roc_auc").passed
    assert [c.name for c in verdict.failed] == ["baseline_brier"]


def test_the_baseline_can_be_turned_off() -> None:
    y, _ = _weak_world(0.72)
    verdict = judge(
        scored(y, np.random.default_rng(11).random(N)), None, GateConfig(baseline=False)
    )
    assert verdict.blessed and verdict.checks == ()


def test_a_champion_that_cannot_be_scored_fails_the_gate() -> None:
    y, p = _weak_world(1.5)
    verdict = judge(scored(y, p), None, CFG, champion_problem="needs feature(s) ['x']")
    assert not verdict.blessed
    (failed,) = verdict.failed
    assert (failed.name, failed.detail) == ("champion_comparable", "needs feature(s) ['x']")
    # the baseline is still reported, for the reviewer who must decide
    assert [c.name for c in verdict.checks] == [
        "champion_comparable",
        "baseline_roc_auc",
        "baseline_brier",
    ]


def test_comparisons_need_per_row_scores() -> None:
    metrics_only = Scores({"roc_auc": 0.8, "pr_auc": 0.5, "brier": 0.1})
    with pytest.raises(ValueError, match="per-row scores are missing"):
        judge(metrics_only, metrics_only, CFG)
    with pytest.raises(ValueError, match="per-row scores are missing"):
        judge(metrics_only, None, CFG)


# --- a regression -------------------------------------------------------------------------------


def test_a_regression_is_compared_on_r2_and_must_beat_its_mean() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=N)
    y = 50 + 10 * x + rng.normal(size=N) * 5
    champion = 50 + 10 * x + rng.normal(size=N) * 4
    worse = 50 + 10 * x + rng.normal(size=N) * 8
    same = judge(regressed(y, champion), regressed(y, champion), CFG)
    assert same.blessed and check(same, "max_regression").ci_low == 0.0
    refused = judge(regressed(y, worse), regressed(y, champion), CFG)
    got = check(refused, "max_regression")
    assert not got.passed and got.ci_high < 0
    assert got.detail.startswith(f"r2 {got.challenger} vs champion {got.champion}")
    assert got.difference == pytest.approx(r2_score(y, worse) - r2_score(y, champion), abs=1e-6)

    first = judge(regressed(y, champion), None, CFG)
    assert [c.name for c in first.checks] == ["baseline_r2", "baseline_mae"]
    assert first.blessed and check(first, "baseline_r2").baseline == 0.0
    mean_mae = mean_absolute_error(y, np.full(N, y.mean()))
    assert check(first, "baseline_mae").baseline == pytest.approx(mean_mae, abs=1e-6)
    useless = judge(regressed(y, y.mean() + rng.normal(size=N)), None, CFG)
    assert not useless.blessed
    # floors in the target's unit, set per dataset
    floors = judge(regressed(y, champion), None, replace_cfg(max_mae=1.0, min_r2=0.5))
    assert [c.name for c in floors.failed] == ["max_mae"]


# --- the floors (point estimates), the config ---------------------------------------------------


def metrics(roc_auc: float, *, pr_auc: float = 0.5, brier_: float = 0.15) -> Scores:
    return Scores({"roc_auc": roc_auc, "pr_auc": pr_auc, "brier": brier_})


FLOORS = GateConfig(min_roc_auc=0.7, min_pr_auc=0.3, max_brier=0.2, baseline=False)


ALL_FLOORS = ["min_roc_auc", "min_pr_auc", "max_brier"]


@pytest.mark.parametrize(
    ("case", "challenger", "cfg", "blessed", "failed", "names"),
    [
        ("floors set, all pass", metrics(0.80), FLOORS, True, [], ALL_FLOORS),
        ("an absolute floor fails", metrics(0.65), FLOORS, False, ["min_roc_auc"], ALL_FLOORS),
        (
            "brier above its ceiling",
            metrics(0.8, brier_=0.25),
            FLOORS,
            False,
            ["max_brier"],
            ALL_FLOORS,
        ),
        ("a floor met exactly passes", metrics(0.70), FLOORS, True, [], ALL_FLOORS),
        (
            "all off, no champion: nothing to fail",
            metrics(0.1),
            GateConfig(baseline=False),
            True,
            [],
            [],
        ),
    ],
)
def test_floors_table(
    case: str,
    challenger: Scores,
    cfg: GateConfig,
    blessed: bool,
    failed: list[str],
    names: list[str],
) -> None:
    verdict = judge(challenger, None, cfg)
    assert verdict.blessed is blessed, case
    assert [c.name for c in verdict.failed] == failed, case
    assert [c.name for c in verdict.checks] == names, case
    # a floor is a point estimate: no interval
    assert all(c.ci_low is None and c.difference is None for c in verdict.checks), case


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"min_roc_auc": 1.5}, r"gate\.min_roc_auc"),
        ({"max_regression": -0.1}, r"gate\.max_regression"),
        ({"min_slice_rows": 0}, r"gate\.min_slice_rows"),
        ({"min_slice_class_rows": 0}, r"gate\.min_slice_class_rows"),
        ({"champion_ref": ""}, r"gate\.champion_ref"),
        ({"confidence": 1.0}, r"gate\.confidence"),
        ({"confidence": 0.3}, r"gate\.confidence"),
        ({"bootstrap": 10}, r"gate\.bootstrap"),
        ({"bootstrap": None}, r"gate\.bootstrap: None is not a whole number"),
        ({"baseline": "yes"}, r"gate\.baseline"),
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
    assert (cfg.confidence, cfg.bootstrap, cfg.baseline) == (0.95, 1000, True)
    # no global floors: a dataset sets its own
    floors = ("min_roc_auc", "min_pr_auc", "max_brier", "min_r2", "max_mae", "max_rmse")
    assert all(getattr(cfg, name) is None for name in floors)


# --- the bootstrap itself -----------------------------------------------------------------------


def _weights_and_repeats(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    counts = np.random.default_rng(seed).integers(0, 3, size=n)
    return counts[None, :].astype("float64"), np.repeat(np.arange(n), counts)


def test_weighted_metrics_equal_sklearn_on_the_rows_repeated() -> None:
    rng = np.random.default_rng(4)
    y = (rng.random(500) < 0.3).astype("float64")
    # rounded scores: many ties, which count half in ROC AUC
    p = np.round(sigmoid(y + rng.normal(size=500)), 1)
    w, take = _weights_and_repeats(500, 1)
    assert roc_auc(y, p, w)[0] == pytest.approx(roc_auc_score(y[take], p[take]), abs=1e-12)
    assert roc_auc(y, p, np.ones((1, 500)))[0] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert brier(y, p, w)[0] == pytest.approx(brier_score_loss(y[take], p[take]))
    t = 10 + rng.normal(size=500) * 3
    q = t + rng.normal(size=500)
    assert r2(t, q, w)[0] == pytest.approx(r2_score(t[take], q[take]))
    assert mae(t, q, w)[0] == pytest.approx(mean_absolute_error(t[take], q[take]))
    assert rmse(t, q, w)[0] == pytest.approx(np.sqrt(np.mean((t[take] - q[take]) ** 2)))
    # a plain metric wrapped gives the same resamples as the vectorised one
    counts = next(resample_counts(500, 20, seed=3, strata=y))
    assert np.allclose(weighted(roc_auc_score)(y, p, counts), roc_auc(y, p, counts))
    # one class only: undefined
    assert np.isnan(roc_auc(np.zeros(5), np.arange(5.0), np.ones((1, 5))))[0]


def test_resamples_draw_rows_with_replacement_within_strata() -> None:
    y = np.array([0.0] * 70 + [1.0] * 30)
    chunks = list(resample_counts(100, 250, seed=9, strata=y))
    counts = np.concatenate(chunks)
    assert counts.shape == (250, 100)
    assert (counts.sum(axis=1) == 100).all()
    assert (counts[:, y == 1].sum(axis=1) == 30).all()  # class counts kept
    assert counts.max() > 1 and (counts == 0).any()  # with replacement
    again = np.concatenate(list(resample_counts(100, 250, seed=9, strata=y)))
    assert np.array_equal(counts, again)
    plain = np.concatenate(list(resample_counts(100, 250, seed=9)))
    assert (plain[:, y == 1].sum(axis=1) != 30).any()


def test_the_bootstrap_standard_error_matches_the_known_one() -> None:
    # the MAE is a mean of |errors|: its standard error is their sd / sqrt(n)
    rng = np.random.default_rng(6)
    t = rng.normal(size=2000)
    q = np.zeros(2000)
    found = bootstrap(t, q, mae, resamples=2000, seed=1)
    known = np.std(np.abs(t), ddof=1) / np.sqrt(2000)
    assert found.se == pytest.approx(known, rel=0.1)
    assert found.low < found.estimate < found.high
    assert found.high - found.low == pytest.approx(2 * 1.96 * known, rel=0.15)


def test_paired_intervals_of_identical_scores_are_zero_and_a_pair_is_narrower() -> None:
    y, p = _weak_world(1.0, seed=2)
    rng = np.random.default_rng(8)
    q = sigmoid(logit(p) + rng.normal(size=N) * 0.3)
    zero = paired_bootstrap(y, p, p, roc_auc, resamples=200, seed=1, strata=y)
    assert (zero.estimate, zero.low, zero.high, zero.se) == (0.0, 0.0, 0.0, 0.0)
    pair = paired_bootstrap(y, p, q, roc_auc, resamples=500, seed=1, strata=y)
    alone = bootstrap(y, p, roc_auc, resamples=500, seed=1, strata=y)
    # the rows both models find easy or hard cancel out of the difference
    assert pair.se < alone.se / 2
    assert pair.values == pytest.approx((roc_auc_score(y, p), roc_auc_score(y, q)))


def test_detectable_difference_is_z_alpha_plus_z_power_times_the_se() -> None:
    assert detectable_difference(0.01, 0.95) == pytest.approx((1.959964 + 0.841621) * 0.01)
    assert detectable_difference(0.01, 0.99) > detectable_difference(0.01, 0.95)
    with pytest.raises(ValueError, match="confidence"):
        detectable_difference(0.01, 1.0)


def test_two_thousand_resamples_of_five_thousand_rows_take_well_under_seconds() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(5000) < 0.3).astype("float64")
    a, b = rng.random(5000) + y, rng.random(5000) + 0.8 * y
    start = time.perf_counter()
    found = paired_bootstrap(y, a, b, roc_auc, resamples=2000, seed=1, strata=y)
    elapsed = time.perf_counter() - start
    assert found.resamples == 2000
    # about half a second on two busy cores; the bound leaves room for a loaded machine
    assert elapsed < 5.0, elapsed


# --- scoring and the command --------------------------------------------------------------------


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
    # the rows the bootstrap resamples: the same targets, predictions and slice labels
    assert np.array_equal(got.rows.y, expected.rows.y)
    assert np.array_equal(got.rows.predictions, expected.rows.predictions)
    assert np.array_equal(got.rows.slices["plan"], test["plan"].to_numpy(dtype=str))
    assert got.rows.predictions.shape == (300,)


def test_champion_needing_a_feature_the_test_set_lacks_is_not_comparable(fitted: Path) -> None:
    test = make_frame(300, seed=2).drop(columns="tenure")
    with pytest.raises(NotComparable, match=r"feature\(s\) \['tenure'\] absent from test"):
        score_champion(
            _champion(fitted, SCHEMA), test, "churn", EvaluateConfig(), source="test.parquet"
        )
    # many: a few are named, the rest counted
    wide = replace(SCHEMA, numeric=("tenure", *(f"x{i}" for i in range(7))))
    with pytest.raises(NotComparable, match=r"\['tenure', 'x0', 'x1', 'x2', 'x3'\] \(\+3 more\)"):
        score_champion(_champion(fitted, wide), test, "churn", EvaluateConfig(), source="t")


# --- no comparable champion: another dataset, other features (a real git + DVC repository) ------

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "DVC_NO_ANALYTICS": "1"}  # fmt: skip


def _sh(repo: Path, *cmd: str) -> None:
    import os

    subprocess.run(cmd, cwd=repo, check=True, capture_output=True, env={**os.environ, **GIT_ENV})


def _champion_repo(repo: Path, fitted: Path, dataset: str) -> None:
    """`repo` on branch main: a champion (model, feature schema, dvc.lock) of `dataset`."""
    import hashlib
    import shutil

    from stages.cli.ingest import dvc_executable

    _sh(repo, "git", "init", "-q", "-b", "main")
    _sh(repo, dvc_executable(), "init", "-q")
    (repo / "models").mkdir()
    shutil.copy(fitted, repo / "models/model.skops")
    save_schema(SCHEMA, repo / "artifacts/features/feature_schema.json")
    _sh(repo, dvc_executable(), "add", "-q", "models/model.skops", "artifacts/features")
    md5 = hashlib.md5(fitted.read_bytes()).hexdigest()
    lock = {"schema": "2.0", "stages": {"train": {"outs": [
        {"path": "models/model.skops", "md5": md5, "size": fitted.stat().st_size}]}}}  # fmt: skip
    (repo / "dvc.lock").write_text(yaml.safe_dump(lock))
    _params(repo, dataset)
    _sh(repo, "git", "add", "-A")
    _sh(repo, "git", "commit", "-q", "-m", "champion")


def _params(repo: Path, dataset: str) -> None:
    params = {
        "seed": SEED,
        "gate": {},
        "evaluate": {"threshold": 0.5},
        "dataset": {"name": dataset},
    }
    (repo / "params.yaml").write_text(yaml.safe_dump(params))


def _gate(repo: Path, model: Path, schema: FeatureSchema, test: pd.DataFrame) -> tuple[int, dict]:
    """`evergreen gate` on the workspace: the challenger `model` at the champion's path."""
    import shutil

    workspace = repo / "models/model.skops"
    if model != workspace:
        workspace.unlink()  # DVC may have linked it to its cache: never write through
        shutil.copy(model, workspace)
    save_schema(schema, repo / "artifacts/features/feature_schema.json")
    test.to_parquet(repo / "test.parquet")
    args = ["--model", workspace, "--schema", repo / "artifacts/features/feature_schema.json",
            "--test", repo / "test.parquet", "--params", repo / "params.yaml", "--repo", repo,
            "--lock", repo / "dvc.lock", "--out", repo / "gate.json",
            "--report-out", repo / "gate-report.json"]  # fmt: skip
    code = main([str(a) for a in args])
    return code, json.loads((repo / "gate.json").read_text())


def test_a_champion_of_another_dataset_is_no_comparable_champion(
    fitted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _champion_repo(tmp_path, fitted, "shop")
    test = make_frame(300, seed=2)
    # the same dataset: the champion is fetched and compared
    code, report = _gate(tmp_path, tmp_path / "models/model.skops", SCHEMA, test)
    assert code == 0 and report["champion"]["ref"] == "main" and report["dataset"] == "shop"
    assert report["champion_not_comparable"] is None
    capsys.readouterr()

    _params(tmp_path, "bank")  # a new project cloned from the shop's
    code, report = _gate(tmp_path, tmp_path / "models/model.skops", SCHEMA, test)
    out = capsys.readouterr().out
    assert code == 0, out
    assert report["dataset"] == "bank" and report["champion"] is None
    assert report["champion_missing"] is None
    why = report["champion_not_comparable"]
    assert "is a model of dataset 'shop'" in why and "dataset is 'bank'" in why
    assert sorted(report["checks"]) == ["baseline_brier", "baseline_roc_auc"]
    assert "BLESSED vs no comparable champion" in out and "'shop'" in out


def test_a_champion_reading_features_the_test_set_lacks_is_no_comparable_champion(
    fitted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _champion_repo(tmp_path, fitted, "shop")
    narrow = replace(SCHEMA, numeric=())
    cfg = ModelConfig("m", "logistic_regression", {"max_iter": 200})
    frame = make_frame(400, seed=1).drop(columns="tenure")
    challenger = save_model(train_model(frame, narrow, cfg, seed=7), tmp_path / "challenger.skops")

    code, report = _gate(
        tmp_path, challenger, narrow, make_frame(300, seed=2).drop(columns="tenure")
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert report["champion"] is None
    assert "['tenure']" in report["champion_not_comparable"]
    assert "features differ" in report["champion_not_comparable"]
    assert "FAIL" not in out and "pass baseline_roc_auc" in out


def test_the_champion_is_the_model_promotion_recorded_not_a_refused_one_committed_after(
    fitted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`evergreen run daily --train` refused a challenger, then the workspace was committed
    (README: commit after each run): main's dvc.lock now records the refused model. The
    champion is the model of the commit that last changed models/champion.dvc."""
    import hashlib
    import shutil

    from stages.cli.ingest import dvc_executable

    _champion_repo(tmp_path, fitted, "shop")
    (tmp_path / "models/champion").mkdir()
    (tmp_path / "models/champion/champion.json").write_text('{"model_md5": "a"}')
    _sh(tmp_path, dvc_executable(), "add", "-q", "models/champion")
    _sh(tmp_path, "git", "add", "-A")
    _sh(tmp_path, "git", "commit", "-q", "-m", "promote the champion")
    promoted = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True,
                              text=True, check=True).stdout.strip()  # fmt: skip
    # a refused challenger, trained on fewer rows, committed as the workspace's model
    cfg = ModelConfig("m", "logistic_regression", {"max_iter": 200, "C": 0.001})
    refused = save_model(
        train_model(make_frame(60, seed=5), SCHEMA, cfg, seed=7), tmp_path / "refused.skops"
    )
    workspace = tmp_path / "models/model.skops"
    workspace.unlink()
    shutil.copy(refused, workspace)
    _sh(tmp_path, dvc_executable(), "add", "-q", "models/model.skops")
    lock = yaml.safe_load((tmp_path / "dvc.lock").read_text())
    lock["stages"]["train"]["outs"][0]["md5"] = hashlib.md5(refused.read_bytes()).hexdigest()
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    _sh(tmp_path, "git", "add", "-A")
    _sh(tmp_path, "git", "commit", "-q", "-m", "a refused training run")

    from stages.cli import gate
    from stages.cli.champion import CHAMPION

    assert f"{CHAMPION.as_posix()}.dvc" == gate.CHAMPION_DVC
    code, report = _gate(tmp_path, fitted, SCHEMA, make_frame(300, seed=2))
    capsys.readouterr()
    assert report["champion"]["commit"] == promoted
    full = json.loads((tmp_path / "gate-report.json").read_text())
    assert full["champion"]["model_md5"] == hashlib.md5(fitted.read_bytes()).hexdigest()
    # the same model as the champion: the interval is zero, blessed
    assert code == 0 and report["blessed"] is True


def _inputs(tmp_path: Path, fitted: Path, gate: dict, dataset: dict | None = None) -> list[str]:
    test = make_frame(300, seed=2)
    test.to_parquet(tmp_path / "test.parquet")
    save_schema(SCHEMA, tmp_path / "feature_schema.json")
    params = {
        "seed": SEED,
        "gate": gate,
        "evaluate": {"threshold": 0.5, "slices": ["plan"]},
    }
    if dataset is not None:
        params["dataset"] = dataset
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    # a fresh repository with no commit: no ref holds a champion
    subprocess.run(["git", "init", "-q", "-b", "main", str(tmp_path)], check=True)
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
        "--report-out",
        str(tmp_path / "gate-report.json"),
    ]


def test_main_without_a_champion_judges_the_baseline_and_is_deterministic(
    fitted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _inputs(tmp_path, fitted, {"min_roc_auc": 0.7, "max_regression": 0.0})
    assert main([*argv, "--out", str(tmp_path / "a.json")]) == 0
    out = capsys.readouterr().out
    assert "BLESSED" in out and "no champion" in out
    assert "paired bootstrap: 1000 resamples of 300 test rows" in out and "seed 7" in out
    assert "pass baseline_roc_auc: roc_auc" in out and "detectable difference" in out
    whole = (tmp_path / "gate-report.json").read_bytes()
    assert main([*argv, "--out", str(tmp_path / "b.json")]) == 0
    a = (tmp_path / "a.json").read_bytes()
    assert a == (tmp_path / "b.json").read_bytes()
    assert whole == (tmp_path / "gate-report.json").read_bytes()
    # metrics/gate.json: the verdict's headline, a value per check; the numbers are the report's
    assert json.loads(a) == {
        "blessed": True,
        "checks": {"min_roc_auc": True, "baseline_roc_auc": True, "baseline_brier": True},
        "champion": None,
        "champion_missing": json.loads(whole)["champion_missing"],
        "champion_not_comparable": None,
        "dataset": None,
        "challenger": json.loads(whole)["challenger"],
    }
    report = json.loads(whole)
    assert report["blessed"] is True
    assert report["champion"] is None
    assert "git ref 'main' not found" in report["champion_missing"]
    assert [c["name"] for c in report["checks"]] == [
        "min_roc_auc",
        "baseline_roc_auc",
        "baseline_brier",
    ]
    # the contract: every comparison has its difference, interval and confidence
    contract = ("difference", "ci_low", "ci_high", "confidence", "detectable")
    for check in report["checks"][1:]:
        assert all(isinstance(check[k], float) for k in contract), check
        assert check["ci_low"] <= check["difference"] <= check["ci_high"]
        assert check["confidence"] == 0.95 and check["champion"] is None
    floor = report["checks"][0]
    assert set(floor) >= {"name", "passed", "challenger", "champion", "threshold", "detail"}
    assert all(floor[k] is None for k in contract)
    assert report["bootstrap"]["resamples"] == 1000 and report["bootstrap"]["seed"] == SEED
    assert report["bootstrap"]["rows"] == 300 and report["slices"] == []
    assert len(report["challenger"]["model_md5"]) == 32
    assert whole == (json.dumps(report, indent=2, sort_keys=True) + "\n").encode()


def test_main_reads_the_dataset_gate_settings_which_win(
    fitted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # conf/ has no floor; the dataset sets one its model cannot meet, and fewer resamples
    dataset = {"name": "shop", "gate": {"min_roc_auc": 0.99, "bootstrap": 200}}
    argv = _inputs(tmp_path, fitted, {"min_roc_auc": None, "bootstrap": 1000}, dataset)
    assert main([*argv, "--out", str(tmp_path / "gate.json")]) == 1
    assert "FAIL min_roc_auc" in capsys.readouterr().out
    report = json.loads((tmp_path / "gate-report.json").read_text())
    assert report["bootstrap"]["resamples"] == 200
    assert report["checks"][0]["threshold"] == 0.99


def test_main_exits_1_and_prints_the_failed_check(
    fitted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _inputs(tmp_path, fitted, {"min_roc_auc": 0.99})
    assert main([*argv, "--ref", "nosuch", "--out", str(tmp_path / "gate.json")]) == 1
    out = capsys.readouterr().out
    assert "NOT BLESSED" in out and "FAIL min_roc_auc" in out and "'nosuch'" in out
    report = json.loads((tmp_path / "gate.json").read_text())
    assert report["blessed"] is False
    assert report["checks"]["min_roc_auc"] is False


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("model", r"model\.skops: model file not found"),
        ("params", r"unknown key\(s\) \['min_roc'\]"),
        ("test", r"test\.parquet: missing column\(s\) \['tenure'\]"),
        ("seed", r"missing section 'seed'"),
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
    if breakage == "seed":
        params = yaml.safe_load((tmp_path / "params.yaml").read_text())
        del params["seed"]
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert main([*argv, "--out", str(tmp_path / "gate.json")]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "gate.json").exists()
    assert not (tmp_path / "gate-report.json").exists()


def test_main_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--no-such-option"])
    assert exc.value.code == 2


def test_a_champion_whose_bytes_are_not_the_recorded_ones_is_never_loaded(
    fitted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hashlib

    from stages.cli import gate

    subprocess.run(["git", "init", "-q", "-b", "main", str(tmp_path)], check=True)
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip
    subprocess.run(["git", "-C", str(tmp_path), "commit", "-q", "--allow-empty", "-m", "c"],
                   check=True, env={**__import__("os").environ, **env})  # fmt: skip
    good = fitted.read_bytes()
    lock = {"stages": {"train": {"outs": [{"path": "models/model.skops",
                                           "md5": hashlib.md5(good).hexdigest()}]}}}  # fmt: skip
    files = {
        "models/model.skops": good,
        "schema.json": SCHEMA.to_json(),
        "dvc.lock": yaml.safe_dump(lock),
    }
    monkeypatch.setattr(gate, "_read", lambda api, path, repo, rev, *, mode: files[path])
    args = ("main", tmp_path, "models/model.skops", "schema.json", "dvc.lock")
    assert gate.fetch_champion(*args).model_md5 == hashlib.md5(good).hexdigest()
    # a remote (or cache) that serves other bytes for the recorded model: refused unread, even
    # when the bytes are a perfectly loadable model
    files["models/model.skops"] = save_model(
        train_model(make_frame(200, seed=5), SCHEMA, ModelConfig("m", "logistic_regression", {}),
                    seed=1), tmp_path / "other.skops"
    ).read_bytes()  # fmt: skip
    with pytest.raises(ValueError, match=r"models/model\.skops on 'main' .*its commit records"):
        gate.fetch_champion(*args)
