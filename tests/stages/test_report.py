from __future__ import annotations

from dataclasses import replace

import pandas as pd
import pytest
import yaml

from stages.contract.feature_schema import FeatureSchema
from stages.contract.onnx_predict import OnnxPredictor
from stages.lib.dataset import EntityFeatures, dataset_from_params
from stages.lib.insights import (
    ReportConfig,
    Section,
    Table,
    default_value_column,
    drivers,
    render_html,
    render_markdown,
    risk_by_segment,
    typical_row,
)
from stages.lib.onnx_export import export_onnx
from stages.lib.training import train_model
from tests.conftest import ROOT
from tests.stages.test_train import MODELS, SCHEMA, make_frame


@pytest.fixture(scope="module")
def predictor() -> OnnxPredictor:
    model = train_model(make_frame(300, seed=1), SCHEMA, MODELS["logistic_regression"], 7)
    return OnnxPredictor(export_onnx(model, SCHEMA).SerializeToString(), SCHEMA)


def test_revenue_at_risk_is_score_times_value_per_segment() -> None:
    frame = pd.DataFrame(
        {
            "plan": ["basic", "basic", "premium", None],
            "price": [10.0, 20.0, 40.0, 5.0],
            "score": [0.5, 0.25, 0.1, 1.0],
            "decision": [True, False, False, True],
        }
    )
    [table] = risk_by_segment(frame, ReportConfig(("plan",), "price")).values()
    rows = {r.plan: r for r in table.itertuples()}
    assert rows["basic"].value_at_risk == pytest.approx(0.5 * 10 + 0.25 * 20)
    assert rows["basic"].share_at_risk == pytest.approx(10 / 30)
    assert rows["premium"].value_at_risk == pytest.approx(4.0)
    assert rows["(missing)"].at_risk == 1
    assert table["plan"].tolist() == ["basic", "(missing)", "premium"]  # largest first
    # no value column: the expected number of entities lost
    [counted] = risk_by_segment(frame, ReportConfig(("plan",), None)).values()
    assert counted.set_index("plan").loc["basic", "value_at_risk"] == pytest.approx(0.75)


def test_default_value_column_comes_from_the_dataset(shop_params) -> None:
    dataset = dataset_from_params(shop_params["dataset"])
    schema = FeatureSchema(
        "customer_id",
        "snapshot_date",
        "churn",
        ("orders_amount_7d", "orders_amount_28d", "monthly_price"),
        ("plan",),
    )
    assert default_value_column(dataset, schema) == "monthly_price"
    no_price = FeatureSchema(
        "customer_id", "snapshot_date", "churn", ("orders_amount_7d", "orders_amount_28d"), ()
    )
    shopless = replace(dataset, entity_features=EntityFeatures())
    assert default_value_column(shopless, no_price) == "orders_amount_28d"
    # a numeric attribute that is no money (a birth year) is never the value at risk
    born = replace(dataset, entity_features=EntityFeatures(numeric=("birth_year",)))
    with_year = FeatureSchema(
        "customer_id", "snapshot_date", "churn", ("birth_year", "orders_amount_28d"), ()
    )
    assert default_value_column(born, with_year) == "orders_amount_28d"
    assert default_value_column(replace(born, amount_types=()), with_year) is None


def test_drivers_name_the_features_that_raise_the_score(predictor) -> None:
    population = make_frame(300, seed=2)
    # low tenure and the basic plan raise churn in make_frame's world; noise does nothing
    risky = population.iloc[[0]].assign(tenure=-3.0, plan="basic", noise=0.0)
    typical = typical_row(population, SCHEMA)
    assert typical["tenure"] == pytest.approx(population["tenure"].median())
    [found] = drivers(risky, population, predictor, SCHEMA, k=3)
    names = [name for name, _ in found]
    assert names[:2] == ["tenure", "plan"]
    assert all(change > 0 for _, change in found)
    assert drivers(risky, population, predictor, SCHEMA, k=3) == [found]  # deterministic
    # a typical customer has nothing that raises its score over the typical value
    calm = population.iloc[[0]].assign(**{k: v for k, v in typical.items()})
    assert drivers(calm, population, predictor, SCHEMA, k=3) == [[]]


def test_pages_hold_every_section_and_embed_their_figures() -> None:
    sections = [
        Section("a", "First <section>", ["text with `code` and **bold**"], figure="f.png"),
        Section("b", "Second", [], tables=(("t", Table(["x", "y"], [["1", "a|b"]])),)),
    ]
    page = render_html("Title", sections, {"f.png": b"\x89PNG fake"})
    assert "<h2>First &lt;section&gt;</h2>" in page and "<h2>Second</h2>" in page
    assert 'src="data:image/png;base64,iVBORyBmYWtl"' in page
    assert "<code>code</code>" in page and "<strong>bold</strong>" in page
    assert "http" not in page
    markdown = render_markdown("Title", sections)
    assert "![First <section>](figures/f.png)" in markdown
    assert "| 1 | a\\|b |" in markdown


def test_a_regressions_page_shows_predictions_and_residuals_and_nothing_of_churn() -> None:
    from stages.lib.insights import (
        PageInputs,
        Words,
        build_page,
        prediction_by_segment,
        trend_table,
    )
    from tests.stages.test_regression import SCHEMA as REG_SCHEMA
    from tests.stages.test_regression import make_frame as reg_frame

    train = reg_frame(300, seed=1)
    model = train_model(train, REG_SCHEMA, MODELS["logistic_regression"], 7)  # Ridge
    predictor = OnnxPredictor(export_onnx(model, REG_SCHEMA).SerializeToString(), REG_SCHEMA)
    frame = reg_frame(60, seed=2).drop(columns="cnt").assign(snapshot_date="2026-03-01")
    frame["prediction"] = predictor.predict(frame)
    frame["model_version"] = "m1"
    cfg = ReportConfig(("weather",), None, top_n=5)
    [by_weather] = prediction_by_segment(frame, cfg).values()
    rainy = frame[frame["weather"] == "rain"]["prediction"]
    row = by_weather.set_index("weather").loc["rain"]
    assert row["rows"] == len(rainy) and row["total"] == pytest.approx(rainy.sum())
    top = frame.nlargest(5, "prediction")
    found = drivers(top, frame, predictor, REG_SCHEMA, 2)
    # hotter and later hours raise the count in make_frame's world
    assert {name for name, _ in found[0]} <= {"hour", "temp", "weather"} and found[0]
    monitor = {
        "date": "2026-03-01",
        "retrain_recommended": False,
        "reasons": [],
        "performance": {
            "snapshots": {"2026-03-01": {"n": 60, "mae": 9.5, "rmse": 12.0, "residual_psi": 0.05}}
        },
    }
    trend = trend_table(pd.DataFrame(), frame, 0.5)
    assert list(trend.columns)[:3] == ["snapshot_date", "rows", "mean_prediction"]
    page = build_page(
        PageInputs(
            frame=frame,
            schema=REG_SCHEMA,
            cfg=cfg,
            words=Words("rows_regression", "row", "rows"),
            label="cnt",
            top=top,
            top_drivers=found,
            trend=trend,
            monitor=monitor,
            history=pd.DataFrame(),
        )
    )
    sections, figures = page.sections, page.figures
    assert [s.key for s in sections] == [
        "distribution",
        "segments",
        "top",
        "residuals",
        "trend",
        "monitoring",
    ]
    assert set(figures) == {"distribution.png", "segments.png", "trend.png"}
    page = render_markdown("bikes: cnt insights", sections)
    assert "| 2026-03-01 | 60 | 9.500 | 12.000 |" in page
    for word in ("risk", "churn", "threshold", "score", "revenue"):
        assert word not in page.lower(), word


def test_a_rows_tasks_times_are_shown_in_its_tables_zone() -> None:
    """Validate stores naive UTC: a New York trip at 20:47 on the 24th is shown so, with its
    zone, not as 00:47 on the 25th; a UTC table's times are left as they are."""
    from stages.lib.insights import _fmt, local_times

    raw = yaml.safe_load((ROOT / "conf/dataset/bank.yaml").read_text())
    raw.pop("defaults", None)
    table = next(iter(raw["tables"]))
    raw["tables"][table]["timezone"] = "America/New_York"
    dataset = dataset_from_params(raw)
    time = dataset.task.time
    rows = pd.DataFrame({time: pd.to_datetime(["2016-07-25 00:47:37"]), "x": [1]})
    shown = local_times(rows, dataset)
    assert _fmt(shown[time].iloc[0]) == "2016-07-24 20:47:37 EDT"
    raw["tables"][table]["timezone"] = "UTC"
    assert local_times(rows, dataset_from_params(raw)) is rows
