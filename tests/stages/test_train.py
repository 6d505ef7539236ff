from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import log_loss, roc_auc_score

from stages.contract.feature_schema import FeatureSchema, save_schema
from stages.lib.model_io import load_model
from stages.lib.training import (
    ESTIMATORS,
    MISSING_CATEGORY,
    REGRESSORS,
    ModelConfig,
    SearchParam,
    TrainConfig,
    build_estimator,
    build_preprocessor,
    check_frame,
    positive_proba,
    train_model,
    tune_model,
)
from stages.train import main

CONF_MODELS = Path(__file__).resolve().parents[2] / "conf" / "model"
SCHEMA = FeatureSchema(
    entity_key="customer_id",
    time="snapshot_date",
    label="churn",
    numeric=("tenure", "noise"),
    categorical=("plan", "country"),
    # plan's values come from the schema; country's are learned from the data
    categories={"plan": ("basic", "standard", "premium")},
)
MODELS = {
    "logistic_regression": ModelConfig("logreg", "logistic_regression", {"C": 1.0}),
    "hist_gradient_boosting": ModelConfig(
        "hgb", "hist_gradient_boosting", {"max_iter": 40, "min_samples_leaf": 10}
    ),
    "random_forest": ModelConfig(
        "rf", "random_forest", {"n_estimators": 30, "max_depth": 6, "min_samples_leaf": 5}
    ),
    # a few quick epochs: enough to learn the toy signal
    "torch_mlp": ModelConfig(
        "mlp",
        "torch_mlp",
        {"hidden_sizes": [16], "epochs": 30, "batch_size": 64, "learning_rate": 0.01},
    ),
}
LOGREG_SPACE = (SearchParam("C", "float", low=0.001, high=100.0, log=True),)


def make_frame(n: int = 300, seed: int = 0) -> pd.DataFrame:
    """Churn driven by `tenure` (numeric) and `plan` (categorical); the rest is noise."""
    rng = np.random.default_rng(seed)
    tenure = rng.normal(size=n)
    plan = rng.choice(["basic", "standard", "premium"], size=n)
    logit = -2.0 * tenure + np.select([plan == "basic", plan == "premium"], [1.5, -1.5], 0.0)
    churn = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype("int64")
    frame = pd.DataFrame(
        {
            "customer_id": np.arange(n, dtype="int64"),
            "snapshot_date": pd.Timestamp("2024-03-01").date(),
            "tenure": tenure,
            "noise": rng.normal(size=n),
            "plan": pd.Series(plan, dtype="str"),
            "country": pd.Series(rng.choice(["DE", "FR", "NL"], size=n), dtype="str"),
            "churn": churn,
        }
    )
    frame.loc[::11, "noise"] = np.nan
    frame.loc[::13, "plan"] = None
    frame.loc[::17, "country"] = None
    return frame


def write_inputs(
    root: Path,
    estimator: str = "logistic_regression",
    *,
    search_space: dict | None = None,
    n_trials: int = 0,
    refit: bool | None = None,
) -> dict[str, Path]:
    split = root / "split"
    split.mkdir()
    make_frame(300, seed=1).to_parquet(split / "train.parquet")
    make_frame(200, seed=2).to_parquet(split / "valid.parquet")
    schema = save_schema(SCHEMA, root / "feature_schema.json")
    cfg = MODELS[estimator]
    model = {
        "name": cfg.name,
        "estimator": cfg.estimator,
        "hyperparameters": dict(cfg.hyperparameters),
    }
    if search_space:
        model["search_space"] = search_space
    train = {"n_jobs": 1, "n_trials": n_trials}
    if refit is not None:  # absent: the default (true)
        train["refit"] = refit
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump({"seed": 7, "model": model, "train": train}, sort_keys=False))
    return {"split": split, "schema": schema, "params": params}


def run_main(
    root: Path, inputs: dict[str, Path], tag: str = "", trials: bool = False
) -> tuple[Path, Path]:
    model = root / f"models{tag}" / "model.skops"
    metrics = root / f"metrics{tag}" / "train.json"
    argv = [str(inputs["split"]), str(inputs["schema"]), str(model), str(metrics)]
    if trials:
        argv += ["--trials-out", str(root / f"metrics{tag}" / "trials.csv")]
    assert main([*argv, "--params", str(inputs["params"])]) == 0
    return model, metrics


@pytest.mark.parametrize("estimator", sorted(MODELS))
def test_train_model_learns_signal(estimator: str) -> None:
    model = train_model(make_frame(300, seed=1), SCHEMA, MODELS[estimator], seed=7)
    valid = make_frame(300, seed=2)
    scores = positive_proba(model, valid, SCHEMA)
    assert scores.shape == (300,)
    assert np.all((scores >= 0) & (scores <= 1))
    assert roc_auc_score(valid["churn"], scores) > 0.75


@pytest.mark.parametrize("estimator", sorted(MODELS))
def test_unknown_and_missing_categories_do_not_crash(estimator: str) -> None:
    model = train_model(make_frame(300, seed=1), SCHEMA, MODELS[estimator], seed=7)
    valid = make_frame(20, seed=3)
    valid["plan"] = valid["plan"].astype(object)
    valid["country"] = valid["country"].astype(object)
    valid.loc[0:4, "plan"] = "enterprise"
    valid.loc[5:9, "country"] = "JP"
    valid.loc[10, "plan"] = None
    valid.loc[11, "country"] = pd.NA
    valid.loc[12, "tenure"] = np.nan
    scores = positive_proba(model, valid, SCHEMA)
    assert np.all(np.isfinite(scores))


def test_unknown_category_encodes_as_zeros_missing_as_own_column() -> None:
    train = make_frame(100, seed=1)
    pre = build_preprocessor(SCHEMA).fit(train)
    names = list(pre.get_feature_names_out())
    plan_cols = [i for i, name in enumerate(names) if "__plan_" in name]
    # schema categories plus one column for missing, in schema order
    assert [names[i].split("__plan_")[1] for i in plan_cols] == [
        "basic",
        "standard",
        "premium",
        MISSING_CATEGORY,
    ]
    probe = train.head(2).copy()
    probe["plan"] = pd.Series(["enterprise", None], dtype="str", index=probe.index)
    encoded = pre.transform(probe)[:, plan_cols]
    np.testing.assert_array_equal(encoded, [[0, 0, 0, 0], [0, 0, 0, 1]])


def test_preprocessor_imputes_median_and_scales() -> None:
    frame = make_frame(200, seed=4)
    pre = build_preprocessor(SCHEMA).fit(frame)
    out = pre.transform(frame)
    noise_col = list(pre.get_feature_names_out()).index("numeric__noise")
    assert not np.isnan(out).any()
    # imputation first (the observed median), then scaling over the imputed column
    filled = frame["noise"].fillna(frame["noise"].median())
    expected = (filled - filled.mean()) / filled.std(ddof=0)
    np.testing.assert_allclose(out[:, noise_col], expected, rtol=0, atol=1e-9)


def test_build_estimator_seeds_and_passes_hyperparameters() -> None:
    est = build_estimator(ModelConfig("x", "logistic_regression", {"C": 0.3}), seed=11)
    assert est.get_params()["C"] == 0.3
    assert est.get_params()["random_state"] == 11


def test_build_estimator_unknown_name_lists_allowed() -> None:
    with pytest.raises(ValueError, match="xgboost") as err:
        build_estimator(ModelConfig("x", "xgboost", {}), seed=0)
    for name in ESTIMATORS:
        assert name in str(err.value)


def test_build_estimator_rejects_bad_hyperparameters() -> None:
    with pytest.raises(ValueError, match="max_depthh"):
        build_estimator(ModelConfig("x", "hist_gradient_boosting", {"max_depthh": 3}), seed=0)
    with pytest.raises(ValueError, match="seed"):
        build_estimator(ModelConfig("x", "logistic_regression", {"random_state": 1}), seed=0)


@pytest.mark.parametrize("path", sorted(CONF_MODELS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_model_config_builds(path: Path) -> None:
    cfg = ModelConfig.from_params(yaml.safe_load(path.read_text()))
    # a family builds for every kind it has an estimator of (ridge: regressions only)
    kinds = [k for k, table in ((False, ESTIMATORS), (True, REGRESSORS)) if cfg.estimator in table]
    assert kinds
    for regression in kinds:
        built = build_estimator(cfg, seed=0, regression=regression)
        assert built.get_params()["random_state"] == 0
    # a search space, holding the config's own values (tuning's trial 0)
    assert cfg.search_space
    for param in cfg.search_space:
        assert param.contains(cfg.hyperparameters[param.name]), param.name


def test_config_families_cover_every_estimator() -> None:
    estimators = {yaml.safe_load(p.read_text())["estimator"] for p in CONF_MODELS.glob("*.yaml")}
    assert estimators == set(ESTIMATORS) | set(REGRESSORS)


# --- tuning ------------------------------------------------------------------------------------


def test_tuning_is_deterministic_and_starts_from_the_config() -> None:
    cfg = ModelConfig("logreg", "logistic_regression", {"C": 1.0}, LOGREG_SPACE)
    train, valid, test = make_frame(300, seed=1), make_frame(200, seed=2), make_frame(50, seed=5)
    a = tune_model(train, valid, SCHEMA, cfg, seed=7, n_trials=4)
    b = tune_model(train, valid, SCHEMA, cfg, seed=7, n_trials=4)
    pd.testing.assert_frame_equal(a.trials, b.trials)
    assert a.hyperparameters == b.hyperparameters and a.best_trial == b.best_trial
    np.testing.assert_array_equal(
        positive_proba(a.model, test, SCHEMA), positive_proba(b.model, test, SCHEMA)
    )
    assert list(a.trials.columns) == ["trial", "score", "C"]
    assert a.trials["trial"].tolist() == [0, 1, 2, 3] and a.n_trials == 4
    assert a.trials.loc[0, "C"] == 1.0  # trial 0 is the config's own value
    assert a.trials["C"].nunique() == 4
    assert a.best_score == pytest.approx(a.trials["score"].max(), abs=1e-6)
    assert a.hyperparameters["C"] == a.trials.loc[a.best_trial, "C"]
    # another seed explores other values
    c = tune_model(train, valid, SCHEMA, cfg, seed=8, n_trials=4)
    assert c.trials["C"].tolist()[1:] != a.trials["C"].tolist()[1:]


def test_a_search_space_reordered_tunes_to_the_same_model() -> None:
    """DVC compares params as mappings: a search space whose keys were only reordered is
    unchanged to `dvc repro`, so it must tune the same (Optuna draws in suggestion order)."""
    hgb = yaml.safe_load((CONF_MODELS / "hgb.yaml").read_text())
    reordered = {**hgb, "search_space": dict(reversed(list(hgb["search_space"].items())))}
    train, valid = make_frame(300, seed=1), make_frame(200, seed=2)
    a, b = (
        tune_model(train, valid, SCHEMA, ModelConfig.from_params(raw), seed=7, n_trials=4)
        for raw in (hgb, reordered)
    )
    pd.testing.assert_frame_equal(a.trials, b.trials)
    assert a.hyperparameters == b.hyperparameters


def test_tuned_model_is_what_a_refit_of_the_best_params_gives() -> None:
    cfg = MODELS["hist_gradient_boosting"]
    space = (SearchParam("max_leaf_nodes", "int", low=4, high=31),)
    cfg = ModelConfig(cfg.name, cfg.estimator, {**cfg.hyperparameters, "max_iter": 20}, space)
    train, valid = make_frame(300, seed=1), make_frame(200, seed=2)
    tuned = tune_model(train, valid, SCHEMA, cfg, seed=7, n_trials=3)
    refit = train_model(train, SCHEMA, cfg, 7, valid=valid, hyperparameters=tuned.hyperparameters)
    np.testing.assert_array_equal(
        positive_proba(tuned.model, valid, SCHEMA), positive_proba(refit, valid, SCHEMA)
    )
    assert roc_auc_score(valid["churn"], positive_proba(refit, valid, SCHEMA)) == (
        pytest.approx(tuned.best_score)
    )


def test_zero_trials_fits_the_config_only() -> None:
    cfg = ModelConfig("logreg", "logistic_regression", {"C": 0.5}, LOGREG_SPACE)
    train, valid = make_frame(300, seed=1), make_frame(200, seed=2)
    tuned = tune_model(train, valid, SCHEMA, cfg, seed=7, n_trials=0)
    assert tuned.n_trials == 0 and tuned.best_trial == 0
    assert tuned.hyperparameters == {"C": 0.5}
    assert tuned.trials[["trial", "C"]].to_dict(orient="records") == [{"trial": 0, "C": 0.5}]
    plain = train_model(train, SCHEMA, cfg, 7)
    np.testing.assert_array_equal(
        positive_proba(tuned.model, valid, SCHEMA), positive_proba(plain, valid, SCHEMA)
    )


def test_config_outside_the_space_is_not_a_trial() -> None:
    cfg = ModelConfig("logreg", "logistic_regression", {"C": 500.0}, LOGREG_SPACE)
    tuned = tune_model(make_frame(200, 1), make_frame(100, 2), SCHEMA, cfg, seed=7, n_trials=2)
    assert len(tuned.trials) == 2
    assert (tuned.trials["C"] <= 100.0).all()


def test_mlp_list_choices_are_tuned_as_json() -> None:
    base = MODELS["torch_mlp"]
    space = (SearchParam("hidden_sizes", "categorical", choices=([8], [16, 8])),)
    cfg = ModelConfig(base.name, base.estimator, {**base.hyperparameters, "epochs": 5}, space)
    tuned = tune_model(make_frame(200, 1), make_frame(100, 2), SCHEMA, cfg, seed=1, n_trials=3)
    assert set(tuned.trials["hidden_sizes"]) <= {"[8]", "[16,8]"}
    assert tuned.hyperparameters["hidden_sizes"] in ([8], [16, 8])


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"type": "uniform", "low": 0, "high": 1}, "needs a `type`"),
        ({"type": "float", "low": 1}, "needs `low` and `high`"),
        ({"type": "float", "low": 2, "high": 1}, "low 2.0 > high 1.0"),
        ({"type": "float", "low": 0, "high": 1, "log": True}, "low > 0"),
        ({"type": "int", "low": 1, "high": 9, "stepp": 2}, r"unknown keys \['stepp'\]"),
        ({"type": "categorical", "choices": []}, "non-empty list"),
    ],
)
def test_bad_search_space_is_named(raw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=f"model.search_space.C.*{message}"):
        ModelConfig.from_params(
            {"name": "x", "estimator": "logistic_regression", "search_space": {"C": raw}}
        )


def test_train_config_defaults_and_rejects_negative_trials() -> None:
    assert TrainConfig.from_params({}).n_trials == 5
    assert TrainConfig.from_params({}).refit is True
    with pytest.raises(ValueError, match=r"train\.n_trials"):
        TrainConfig.from_params({"n_trials": -1})
    with pytest.raises(ValueError, match=r"train\.refit: expected true or false, got 'yes'"):
        TrainConfig.from_params({"refit": "yes"})


def test_main_tunes_and_writes_the_trials_table(tmp_path: Path, capsys) -> None:
    space = {"C": {"type": "float", "low": 0.001, "high": 100.0, "log": True}}
    inputs = write_inputs(tmp_path, search_space=space, n_trials=3)
    model_path, metrics_path = run_main(tmp_path, inputs, trials=True)
    # the line names the class fitted (logistic_regression fits a Ridge for a regression)
    assert "(logistic_regression: LogisticRegression) on" in capsys.readouterr().out
    metrics = json.loads(metrics_path.read_text())
    trials = pd.read_csv(tmp_path / "metrics" / "trials.csv")
    assert list(trials.columns) == ["trial", "score", "C"] and len(trials) == 3
    assert metrics["tuning"]["n_trials"] == 3
    best = metrics["tuning"]["best_trial"]
    assert metrics["tuning"]["best_score"] == trials["score"].max() == trials["score"][best]
    assert metrics["valid"]["roc_auc"] == metrics["tuning"]["best_score"]
    assert metrics["hyperparameters"]["C"] == pytest.approx(trials["C"][best], abs=1e-6)
    fitted = load_model(model_path).named_steps["estimator"]
    assert abs(fitted.C - metrics["hyperparameters"]["C"]) <= 1e-6
    first = (tmp_path / "metrics" / "trials.csv").read_bytes()
    run_main(tmp_path, inputs, trials=True)
    assert (tmp_path / "metrics" / "trials.csv").read_bytes() == first


def test_check_frame_failures_name_the_source() -> None:
    frame = make_frame(50)
    with pytest.raises(ValueError, match=r"a\.parquet: no rows"):
        check_frame(frame.iloc[0:0], SCHEMA, source="a.parquet")
    with pytest.raises(ValueError, match=r"a\.parquet: missing column.*'plan'"):
        check_frame(frame.drop(columns="plan"), SCHEMA, source="a.parquet")
    with pytest.raises(ValueError, match=r"a\.parquet: label 'churn' has a single class"):
        check_frame(frame.assign(churn=0), SCHEMA, source="a.parquet")
    with pytest.raises(ValueError, match=r"a\.parquet: label 'churn' must be 0/1"):
        check_frame(frame.assign(churn=2), SCHEMA, source="a.parquet")
    with pytest.raises(ValueError, match=r"a\.parquet: numeric feature.*'tenure'"):
        check_frame(frame.assign(tenure="x"), SCHEMA, source="a.parquet")
    check_frame(frame, SCHEMA, source="a.parquet")


def test_train_model_does_not_mutate_input() -> None:
    frame = make_frame(100)
    before = frame.copy()
    train_model(frame, SCHEMA, MODELS["logistic_regression"], seed=7)
    pd.testing.assert_frame_equal(frame, before)


@pytest.mark.parametrize("estimator", sorted(MODELS))
def test_main_writes_model_and_metrics(tmp_path: Path, estimator: str) -> None:
    inputs = write_inputs(tmp_path, estimator, refit=False)
    model_path, metrics_path = run_main(tmp_path, inputs)
    metrics = json.loads(metrics_path.read_text())
    train = pd.read_parquet(inputs["split"] / "train.parquet")
    valid = pd.read_parquet(inputs["split"] / "valid.parquet")
    assert metrics["train"] == {"rows": 300, "positives": int(train["churn"].sum())}
    # recompute from the saved model, independently of the stage's own scoring
    scores = load_model(model_path).predict_proba(valid[list(SCHEMA.features)])[:, 1]
    assert metrics["valid"]["rows"] == 200
    assert metrics["valid"]["positives"] == int(valid["churn"].sum())
    assert metrics["valid"]["roc_auc"] == round(roc_auc_score(valid["churn"], scores), 6)
    assert metrics["valid"]["log_loss"] == pytest.approx(log_loss(valid["churn"], scores), 1e-6)
    assert metrics["refit_rows"] is None
    assert metrics_path.read_text() == json.dumps(metrics, indent=2, sort_keys=True) + "\n"


@pytest.mark.parametrize("estimator", sorted(MODELS))
def test_the_model_written_learnt_valid_and_the_valid_metrics_judge_the_one_fitted_on_train(
    tmp_path: Path, estimator: str
) -> None:
    inputs = write_inputs(tmp_path, estimator)  # train.refit's default
    model_path, metrics_path = run_main(tmp_path, inputs)
    metrics = json.loads(metrics_path.read_text())
    train = pd.read_parquet(inputs["split"] / "train.parquet")
    valid = pd.read_parquet(inputs["split"] / "valid.parquet")
    cfg = MODELS[estimator]
    on_train = train_model(train, SCHEMA, cfg, 7, valid=valid)
    # what the stage writes: the same hyperparameters on train + valid; a family that stopped
    # early on valid runs the epochs it kept, with nothing to stop on
    chosen = dict(cfg.hyperparameters)
    best_epoch = getattr(on_train.named_steps["estimator"], "best_epoch_", None)
    if best_epoch is not None:
        chosen["epochs"] = best_epoch
        assert best_epoch < cfg.hyperparameters["epochs"]  # it did stop early here
    both = pd.concat([train, valid], ignore_index=True)
    expected = train_model(both, SCHEMA, cfg, 7, hyperparameters=chosen)
    probe = make_frame(100, seed=5)
    written = load_model(model_path)
    np.testing.assert_array_equal(
        positive_proba(written, probe, SCHEMA), positive_proba(expected, probe, SCHEMA)
    )
    assert not np.array_equal(
        positive_proba(written, probe, SCHEMA), positive_proba(on_train, probe, SCHEMA)
    )
    # valid is in sample for the model written: its metrics are the train-only model's
    scores = positive_proba(on_train, valid, SCHEMA)
    assert metrics["valid"]["roc_auc"] == round(roc_auc_score(valid["churn"], scores), 6)
    assert metrics["train"]["rows"] == 300 and metrics["refit_rows"] == 500


@pytest.mark.parametrize("estimator", sorted(MODELS))
def test_main_is_deterministic(tmp_path: Path, estimator: str) -> None:
    inputs = write_inputs(tmp_path, estimator)
    model_a, metrics_a = run_main(tmp_path, inputs, tag="_a")
    model_b, metrics_b = run_main(tmp_path, inputs, tag="_b")
    assert metrics_a.read_bytes() == metrics_b.read_bytes()
    test = make_frame(100, seed=5)
    np.testing.assert_array_equal(
        positive_proba(load_model(model_a), test, SCHEMA),
        positive_proba(load_model(model_b), test, SCHEMA),
    )


def test_seed_changes_hgb_model(tmp_path: Path) -> None:
    # guards the determinism test against a model that ignores its seed entirely
    cfg = ModelConfig("hgb", "hist_gradient_boosting", {"max_iter": 30, "max_features": 0.5})
    frame, test = make_frame(300, seed=1), make_frame(50, seed=5)
    a = positive_proba(train_model(frame, SCHEMA, cfg, seed=1), test, SCHEMA)
    b = positive_proba(train_model(frame, SCHEMA, cfg, seed=2), test, SCHEMA)
    assert not np.array_equal(a, b)


@pytest.mark.parametrize(
    ("split", "change", "message"),
    [
        ("train", lambda f: f.iloc[0:0], "no rows"),
        ("valid", lambda f: f.assign(churn=1), "single class"),
        ("valid", lambda f: f.drop(columns="country"), "missing column.*'country'"),
        ("train", lambda f: f.drop(columns="churn"), "missing column.*'churn'"),
    ],
)
def test_main_fails_naming_the_file(tmp_path: Path, split: str, change, message: str) -> None:
    inputs = write_inputs(tmp_path)
    path = inputs["split"] / f"{split}.parquet"
    change(pd.read_parquet(path)).to_parquet(path)
    with pytest.raises(ValueError, match=f"{split}\\.parquet: .*{message}"):
        run_main(tmp_path, inputs)
    assert not (tmp_path / "models" / "model.skops").exists()


def test_main_missing_split_file(tmp_path: Path) -> None:
    inputs = write_inputs(tmp_path)
    (inputs["split"] / "valid.parquet").unlink()
    with pytest.raises(FileNotFoundError, match=r"valid\.parquet"):
        run_main(tmp_path, inputs)
