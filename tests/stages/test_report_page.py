"""The insights page on every sample dataset's config (shop, retail: entity churn; bank: rows
classification; bikes: rows regression), and on data that tripped it: 36 values in a segment
column, no categorical input at all.

Each page is made by the real `report` stage (stages.report.main) from real files: the prediction
set is synthetic (drawn from the dataset config's own columns and allowed values), the model a
small one trained on it and exported to ONNX, and the page is rendered in headless Chromium,
where a script reads every figure's pixels and the visible text."""

from __future__ import annotations

import html
import io
import json
import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from stages.contract.feature_schema import (
    CLASSIFICATION,
    REGRESSION,
    FeatureSchema,
    save_schema,
)
from stages.contract.onnx_predict import OnnxPredictor
from stages.lib.dataset import DatasetConfig, dataset_from_params
from stages.lib.insights import (
    OTHER_RE,
    Page,
    PageInputs,
    ReportConfig,
    Section,
    Words,
    build_page,
    entity_noun,
    out_of_range,
    prediction_by_segment,
    range_sentence,
    risk_by_segment,
    row_ids,
    trend_figure,
    trend_table,
    words_for,
)
from stages.lib.onnx_export import export_onnx
from stages.lib.params import compose_params
from stages.lib.predictions import SNAPSHOT_COL
from stages.lib.rows import rows_features
from stages.lib.scoring import score_frame
from stages.lib.snapshots import FeaturesConfig, schema_features
from stages.lib.training import ModelConfig, train_model
from stages.report import main
from tests.conftest import ROOT, write_params

CHROMIUM = Path("/usr/bin/chromium")
DATASETS = sorted(p.stem for p in (ROOT / "conf" / "dataset").glob("*.yaml"))
DAY = pd.Timestamp("2026-03-02")
# what a rows dataset's page must never say: it has no customers, churn or risk
CHURN_WORDS = ("churn", "at risk", "at_risk", "entities", "entity", "customer", "revenue")
COUNTRIES = [f"Country {chr(65 + i // 26)}{chr(65 + i % 26)}" for i in range(36)]

# Runs in the page once it has loaded: for every figure, its size as drawn and the share of
# its pixels that carry colour (bars, lines; an empty axes frame is black on white only), then
# the tables' sizes and the page's visible text, written as JSON into the DOM for --dump-dom.
PROBE = """
<pre id="probe"></pre>
<script>
window.addEventListener("load", () => {
  const text = document.body.innerText;
  const figures = [...document.images].map((img) => {
    const canvas = document.createElement("canvas");
    canvas.width = img.naturalWidth;
    canvas.height = img.naturalHeight;
    const g = canvas.getContext("2d");
    g.drawImage(img, 0, 0);
    const px = g.getImageData(0, 0, canvas.width, canvas.height).data;
    let colour = 0;
    for (let i = 0; i < px.length; i += 4) {
      const hi = Math.max(px[i], px[i + 1], px[i + 2]);
      const lo = Math.min(px[i], px[i + 1], px[i + 2]);
      if (hi - lo > 40) colour++;
    }
    const box = img.getBoundingClientRect();
    return {
      section: img.closest("section").id,
      width: img.naturalWidth,
      height: img.naturalHeight,
      shown: box.width,
      colour: colour / Math.max(px.length / 4, 1),
    };
  });
  const tables = [...document.querySelectorAll("table")].map((t) => ({
    section: t.closest("section").id,
    head: [...t.querySelectorAll("th")].map((th) => th.innerText),
    rows: [...t.querySelectorAll("tbody tr")].map((tr) => tr.cells[0].innerText),
  }));
  document.getElementById("probe").textContent = JSON.stringify({ figures, tables, text });
});
</script>
"""


def rendered(page: Path) -> dict:
    """What headless Chromium shows of `page`: its figures' pixels, tables and text."""
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} missing: `make test` installs Debian's chromium package")
    with tempfile.TemporaryDirectory() as profile:
        probed = Path(profile) / "probed.html"
        probed.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
        done = subprocess.run(
            [
                str(CHROMIUM),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--window-size=1200,2400",
                "--virtual-time-budget=10000",
                "--dump-dom",
                probed.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    assert found and found.group(1), done.stderr[-2000:]
    return json.loads(html.unescape(found.group(1)))


def compose(name: str, tmp: Path, **sections: dict) -> dict:
    params = yaml.safe_load(
        compose_params(ROOT / "conf", tmp / "composed.yaml", [f"dataset={name}"]).read_text()
    )
    for key, values in sections.items():
        params[key] = {**(params.get(key) or {}), **values}
    params["lake"] = {**params["lake"], "path": str(tmp / "lake")}
    return params


def schema_of(dataset: DatasetConfig, params: dict) -> FeatureSchema:
    """The feature schema the features stage writes for this config."""
    cfg = FeaturesConfig.from_params(params["features"])
    task = dataset.task
    if task.rows:
        numeric, categorical = rows_features(dataset, cfg)
        source, key, label = dataset.table(task.table), task.key, task.target
    else:
        numeric, categorical = schema_features(dataset, cfg)
        source, key, label = dataset.attribute_table, dataset.entity_key, dataset.label.name
    allowed = {c: source.column(c).allowed for c in categorical}
    return FeatureSchema(
        key,
        SNAPSHOT_COL,
        label,
        tuple(numeric),
        tuple(categorical),
        {c: tuple(map(str, v)) for c, v in allowed.items() if v},
        task=REGRESSION if task.regression else CLASSIFICATION,
    )


def synthetic(
    dataset: DatasetConfig, schema: FeatureSchema, n: int, seed: int, values: dict | None = None
) -> pd.DataFrame:
    """`n` rows of the prediction set's shape with the label: numeric features >= 0 (counts,
    amounts), categories from the config (or `values`), a key and a time per row; the label
    rises with the first numeric feature."""
    rng = np.random.default_rng(seed)
    values = values or {}
    frame = pd.DataFrame({c: rng.gamma(2.0, 3.0, n) for c in schema.numeric})
    for c in schema.categorical:
        frame[c] = rng.choice(values.get(c) or schema.categories.get(c) or ("a", "b", "c"), n)
    task = dataset.task
    if task.rows:
        # a row per hour, a few minutes past it: a rows task names its rows by this time
        times = DAY + pd.to_timedelta(np.arange(n), "h") + pd.to_timedelta(7 * seed, "min")
        frame[task.time] = times.astype("datetime64[us]")
        if task.key != task.time:
            frame[task.key] = [f"{k:016x}" for k in rng.integers(0, 2**62, n)]
    else:
        frame[schema.entity_key] = np.arange(n) + 1000 * seed
    frame[SNAPSHOT_COL] = DAY.date()
    x = frame[schema.numeric[0]].to_numpy()
    z = (x - x.mean()) / x.std()
    if schema.regression:
        # a count that is never negative: a linear model predicts below 0 for small x
        frame[schema.label] = np.clip(20 + 15 * z + rng.normal(0, 3, n), 0, None).round()
    else:
        frame[schema.label] = (rng.random(n) < 1 / (1 + np.exp(-2 * z))).astype("int64")
    return frame


def make_page(name: str, tmp: Path, values: dict | None = None, **sections: dict) -> Path:
    """The real report stage's page for dataset `name`, from files as dvc.yaml passes them."""
    params = compose(name, tmp, **sections)
    dataset = dataset_from_params(params["dataset"])
    schema = schema_of(dataset, params)
    train = synthetic(dataset, schema, 400, seed=1, values=values)
    family = ("ridge", "ridge") if schema.regression else ("logreg", "logistic_regression")
    model = train_model(train, schema, ModelConfig(*family, {}), 7)
    onnx = export_onnx(model, schema).SerializeToString()
    predict = synthetic(dataset, schema, 150, seed=2, values=values).drop(columns=schema.label)
    identity = {"model_name": family[0], "model_version": "0" * 32, "data_version": "d1"}
    predictions = score_frame(predict, OnnxPredictor(onnx, schema), schema, 0.5, identity)
    paths = {
        "predictions": tmp / "predictions.parquet",
        "predict": tmp / "predict.parquet",
        "model": tmp / "model.onnx",
        "schema": tmp / "feature_schema.json",
        "monitor": tmp / "monitor.json",
        "history": tmp / "monitor_history.csv",
        "train": tmp / "train.parquet",
    }
    predictions.to_parquet(paths["predictions"], index=False)
    predict.to_parquet(paths["predict"], index=False)
    train.to_parquet(paths["train"], index=False)
    paths["model"].write_bytes(onnx)
    save_schema(schema, paths["schema"])
    paths["monitor"].write_text(
        json.dumps({"date": str(DAY.date()), "retrain_recommended": False, "reasons": []})
    )
    live = "residual_psi" if schema.regression else "live_roc_auc"
    pd.DataFrame(
        {
            "date": ["2026-02-23", "2026-03-02"],
            "dataset": [dataset.name, dataset.name],
            "retrain_recommended": [False, False],
            "psi_max": [0.04, 0.07],
            "score_psi": [0.02, 0.03],
            live: [0.1, 0.12] if schema.regression else [0.81, 0.79],
        }
    ).to_csv(paths["history"], index=False)
    out = tmp / "reports"
    argv = [str(paths[k]) for k in ("predictions", "predict", "model", "schema", "monitor")]
    code = main(
        [
            *argv,
            str(paths["history"]),
            str(out),
            "--params",
            str(write_params(params, tmp / "params.yaml")),
            "--train",
            str(paths["train"]),
        ]
    )
    assert code == 0
    return out


def assert_every_figure_drawn(shown: dict, out: Path) -> None:
    markdown = (out / "report.md").read_text()
    figures = re.findall(r"\]\(figures/([^)]+)\)", markdown)
    assert len(shown["figures"]) == len(figures) >= 2
    for name in figures:
        assert (out / "figures" / name).is_file(), name
    for figure in shown["figures"]:
        # bars, histograms and lines in colour; an empty white figure or empty axes have none
        assert figure["width"] > 0 and figure["colour"] > 0.003, figure
        # drawn at its own size or nearly: never shrunk into unreadable slivers
        assert figure["shown"] >= min(figure["width"], 1000) * 0.95, figure


@pytest.mark.parametrize("name", DATASETS)
def test_every_sample_datasets_page_is_drawn_and_speaks_of_its_task(
    name: str, tmp_path: Path
) -> None:
    out = make_page(name, tmp_path)
    shown = rendered(out / "report.html")
    assert_every_figure_drawn(shown, out)
    text = shown["text"].lower()
    dataset = dataset_from_params(compose(name, tmp_path)["dataset"])
    heads = {t["section"]: t["head"] for t in shown["tables"]}
    if dataset.task.rows:
        for word in CHURN_WORDS:
            assert word not in text, f"{name}: '{word}' on a rows dataset's page"
        # a row is named by its time (and by its key unless that is a hash no one can read)
        assert heads["top"][0] == dataset.task.time
        assert ("row_key" in heads["top"]) is False
    else:
        assert "customers scored" in text and "at risk" in text and "revenue at risk" in text
        assert heads["top"][0] == dataset.entity_key
    if dataset.task.regression:
        # the ridge on a count that is never negative predicts below 0 for the smallest rows
        assert re.search(r"\d+ prediction\(s\) \([\d.]+%\) fall outside the range of cnt", text)
        assert "negative" in text
    if name == "bank":
        # six segment columns: panels stacked one per row, not six slivers side by side
        [segments] = [f for f in shown["figures"] if f["section"] == "revenue"]
        assert segments["height"] > segments["width"] <= 1000, segments


def test_a_segment_column_with_36_values_shows_its_top_values_and_other(tmp_path: Path) -> None:
    out = make_page("retail", tmp_path, values={"country": COUNTRIES})
    shown = rendered(out / "report.html")
    assert_every_figure_drawn(shown, out)
    [country] = [t for t in shown["tables"] if t["section"] == "revenue"]
    assert len(country["rows"]) == 11, country["rows"]
    assert country["rows"][-1] == "other (26 values)"
    assert set(country["rows"][:10]) < set(COUNTRIES)
    assert "the 10 largest values" in shown["text"]


def test_no_categorical_input_leaves_no_empty_figure(tmp_path: Path) -> None:
    out = make_page("bikes", tmp_path, features={"exclude": ["season", "weather"]})
    shown = rendered(out / "report.html")
    assert_every_figure_drawn(shown, out)
    assert not [f for f in shown["figures"] if f["section"] == "segments"]
    assert not (out / "figures" / "segments.png").exists()
    assert "No segment column: the rows have no categorical input" in shown["text"]


# --- the pure core ----------------------------------------------------------------------------


def test_words_follow_the_task(tmp_path: Path) -> None:
    said = {}
    for name in DATASETS:
        dataset = dataset_from_params(compose(name, tmp_path)["dataset"])
        said[name] = words_for(dataset)
    assert (said["shop"].many, said["retail"].many) == ("customers", "customers")
    assert said["bank"].many == said["bikes"].many == "rows"
    assert not said["bank"].churn and said["shop"].churn
    # a positive is named as the data names it: bank's y is "yes", not 1
    assert (said["bank"].positive, said["shop"].positive) == ("yes", "1")
    assert words_for(dataset_from_params(compose("bank", tmp_path)["dataset"]), "call").many == (
        "calls"
    )
    assert [entity_noun(k) for k in ("account_key", "UserId", "id", "company_no")] == [
        "account",
        "user",
        "entity",
        "company",
    ]
    assert ReportConfig.from_params({"noun": "call"}, *_bank(tmp_path)).noun == "call"
    for bad, message in (
        ({"noun": ""}, "report.noun: expected a word"),
        ({"segment_values": 0}, "segment_values must be >= 1"),
    ):
        with pytest.raises(ValueError, match=message):
            ReportConfig.from_params(bad, *_bank(tmp_path))


def _bank(tmp_path: Path) -> tuple[DatasetConfig, FeatureSchema]:
    params = compose("bank", tmp_path)
    dataset = dataset_from_params(params["dataset"])
    return dataset, schema_of(dataset, params)


def test_other_lumps_the_smaller_values_and_keeps_the_totals() -> None:
    rng = np.random.default_rng(3)
    frame = pd.DataFrame(
        {
            "country": rng.choice(COUNTRIES, 500),
            "price": rng.gamma(2.0, 10.0, 500),
            "score": rng.random(500),
        }
    )
    frame["decision"] = frame["score"] >= 0.5
    frame["prediction"] = frame["price"] - 15
    cfg = ReportConfig(("country",), "price", segment_values=5)
    [risk] = risk_by_segment(frame, cfg).values()
    full = (frame["score"] * frame["price"]).groupby(frame["country"]).sum()
    assert risk["country"].tolist()[:5] == full.sort_values(ascending=False).index[:5].tolist()
    assert risk["country"].iloc[-1] == "other (31 values)" and OTHER_RE.match("other (31 values)")
    assert risk["value_at_risk"].sum() == pytest.approx(full.sum())
    assert risk["entities"].sum() == 500
    other = risk.iloc[-1]
    lumped = frame[~frame["country"].isin(risk["country"].iloc[:5])]
    assert other["mean_score"] == pytest.approx(lumped["score"].mean())
    [predicted] = prediction_by_segment(frame, cfg).values()
    assert predicted["rows"].sum() == 500 and len(predicted) == 6
    assert predicted.iloc[-1]["min"] == pytest.approx(
        frame[~frame["country"].isin(predicted["country"].iloc[:5])]["prediction"].min()
    )
    # as many values as shown: nothing is lumped
    [few] = risk_by_segment(frame, ReportConfig(("country",), "price", segment_values=36)).values()
    assert len(few) == 36 and not any(OTHER_RE.match(c) for c in few["country"])


def test_predictions_outside_the_targets_range_are_counted() -> None:
    found = out_of_range(np.array([-3.0, -0.5, 0.0, 10.0, 250.0, 400.0]), (0.0, 300.0))
    assert (found.below, found.negative, found.above, found.outside) == (2, 2, 1, 3)
    sentence = range_sentence(found, "cnt", 6)
    assert sentence.startswith("**3 prediction(s) (50.0%) fall outside the range of `cnt`")
    assert "2 below its minimum, 2 of them negative and 1 above its maximum" in sentence
    assert "a negative `cnt` cannot happen" in sentence
    inside = range_sentence(out_of_range(np.array([1.0, 2.0]), (0.0, 300.0)), "cnt", 2)
    assert inside.startswith("Every prediction lies within")
    # a target that can be negative (a temperature): below its minimum, never "negative"
    assert out_of_range(np.array([-30.0]), (-20.0, 40.0)).negative == 0


def test_rows_are_named_by_time_and_key_the_hash_only_where_times_collide(tmp_path) -> None:
    dataset, schema = _bank(tmp_path)
    times = pd.to_datetime(["2026-03-02 09:00", "2026-03-02 09:05"])
    rows = pd.DataFrame({"call_time": times, "row_key": ["ab", "cd"]})
    assert row_ids(dataset, schema, rows) == ("call_time",)
    same = rows.assign(call_time=times[0])
    assert row_ids(dataset, schema, same) == ("call_time", "row_key")
    # bikes: the key is the time; shop: a customer is its key (the snapshot date is the page's)
    bikes = dataset_from_params(compose("bikes", tmp_path)["dataset"])
    hours = pd.DataFrame({"hour_start": times})
    assert row_ids(bikes, FeatureSchema("hour_start", SNAPSHOT_COL, "cnt", ("x",), ()), hours) == (
        "hour_start",
    )
    shop = dataset_from_params(compose("shop", tmp_path)["dataset"])
    customers = FeatureSchema("customer_id", SNAPSHOT_COL, "churn", ("x",), ())
    assert row_ids(shop, customers, rows.assign(customer_id=[1, 2])) == ("customer_id",)


def test_the_trend_without_history_has_no_empty_panel() -> None:
    current = pd.DataFrame(
        {SNAPSHOT_COL: [DAY.date()] * 3, "score": [0.2, 0.6, 0.9], "model_version": "m"}
    )
    trend = trend_table(pd.DataFrame(), current, 0.5)
    history = pd.DataFrame({"date": ["2026-03-02"], "psi_max": [0.1], "score_psi": [0.05]})
    alone = Image.open(io.BytesIO(trend_figure(trend, pd.DataFrame())))
    beside = Image.open(io.BytesIO(trend_figure(trend, history)))
    assert alone.width == 700 and beside.width == 900


def test_a_day_scored_again_by_a_new_champion_is_this_runs_in_the_trend() -> None:
    """`run daily --train`: the day is published by the old champion, then scored again by
    the one just promoted (and published again): the trend shows this run's model for it."""
    before = (DAY - pd.Timedelta(days=1)).date()
    published = pd.DataFrame(
        {SNAPSHOT_COL: [before, before, DAY.date(), DAY.date()], "score": [0.1, 0.2, 0.3, 0.4],
         "model_version": ["old", "old", "old", "old"]}
    )  # fmt: skip
    current = pd.DataFrame(
        {SNAPSHOT_COL: [DAY.date()] * 3, "score": [0.5, 0.6, 0.9], "model_version": "new"}
    )
    trend = trend_table(published, current, 0.5).set_index(SNAPSHOT_COL)
    assert trend["model_version"].to_dict() == {before: "old", DAY.date(): "new"}
    assert trend["this_run"].to_dict() == {before: False, DAY.date(): True}
    assert trend.loc[DAY.date(), "entities"] == 3


def test_extra_sections_follow_the_tasks_own() -> None:
    frame = pd.DataFrame(
        {SNAPSHOT_COL: [DAY.date()] * 2, "score": [0.2, 0.7], "decision": [False, True]}
    )
    schema = FeatureSchema("k", SNAPSHOT_COL, "y", (), ())
    inputs = PageInputs(
        frame=frame.assign(k=[1, 2]),
        schema=schema,
        cfg=ReportConfig((), None),
        words=Words("rows_classification", "row", "rows"),
        label="y",
        top=frame.iloc[:0].assign(k=[]),
        top_drivers=[],
        trend=trend_table(pd.DataFrame(), frame.assign(model_version="m"), 0.5),
        monitor={},
        history=pd.DataFrame(),
    )
    page = build_page(inputs, [lambda i: Page([Section("shadow", "Shadow", ["x"])], {})])
    assert [s.key for s in page.sections][-2:] == ["monitoring", "shadow"]
    assert set(page.figures) == {"distribution.png", "trend.png"}


def test_the_page_says_which_snapshot_the_monitor_judged_or_that_none_could_be() -> None:
    from stages.lib.insights import _judged_line

    few = {"snapshots": {"2026-03-02": {"n": 24}}, "judged": None, "min_labelled": 200}
    assert "no snapshot holds 200 labelled rows yet" in _judged_line(few)
    pooled = {"snapshots": {"2026-03-09": {"n": 240, "pooled_from": "2026-03-01"}},
              "judged": "2026-03-09", "min_labelled": 200}  # fmt: skip
    assert _judged_line(pooled) == (
        "Realised performance judged on 2026-03-01..2026-03-09 (240 rows)."
    )
    assert _judged_line({}).startswith("No published prediction has matured yet")


def test_the_page_says_which_days_the_input_drift_compared_or_that_none_came_yet() -> None:
    from stages.lib.insights import _inputs_line

    empty = {"days": 0, "first": None, "last": None, "rows": 0}
    fresh = {"cutoff": "2026-04-30", "periods": {"events": {"current": empty}}}
    assert _inputs_line(fresh) == (
        "Input drift: no day after 2026-04-30 (the end of the data the model was judged on) "
        "yet: nothing compared, the model's own days never are."
    )
    week = {"days": 7, "first": "2026-05-01", "last": "2026-05-07", "rows": 700}
    later = {"cutoff": "2026-04-30", "periods": {"events": {"current": week}}}
    assert _inputs_line(later) == (
        "Input drift: 2026-05-01..2026-05-07 compared with the days up to 2026-04-30."
    )
    assert _inputs_line({}) is None
