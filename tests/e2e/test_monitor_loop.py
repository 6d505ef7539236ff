"""Monitoring on the real loop: a model trained before the simulator's drift day is monitored on
the days that follow, as a scheduled job would (new data in, the champion kept: only the data
stages, predict, monitor and report run). Before the drift day nothing flags; after it, the
drifted columns and the published predictions' matured labels do, and `evergreen monitor
--dispatch` calls the retrain workflow's dispatch endpoint (a real local HTTP server)."""

from __future__ import annotations

import json
import subprocess
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from stages.lib.params import compose_params
from tests.e2e.helpers import both_runs, e2e_env, init_repo, ran_stages, run, sh

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DRIFT_DAY = 64  # the model is trained on days 0..59, the regime changes on day 64
SINGLE = ("validate", "profiles", "prepare", "predict_set", "predict", "monitor", "report")
CHROMIUM = Path("/usr/bin/chromium")


def _simulate(repo: Path, *args: str) -> None:
    sh(repo, "evergreen", "lake", "simulate", "--lake", "lake", *args)
    sh(repo, "evergreen", "ingest", "--lake", "lake")


def _monitor_champion(repo: Path) -> dict:
    """New data through the data stages; the same model predicts, is monitored, reported."""
    out = sh(repo, "dvc", "repro", "--single-item", *SINGLE)
    assert "train" not in ran_stages(out) and {"predict", "monitor"} <= ran_stages(out)
    sh(repo, "evergreen", "publish")
    return json.loads((repo / "artifacts/monitor/report.json").read_text())


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> dict:
    repo = init_repo(tmp_path_factory.mktemp("monitor"))
    compose_params(
        repo / "conf",
        repo / "params.yaml",
        [f"simulate.drift_day={DRIFT_DAY}", "train.n_trials=0"],
    )
    _simulate(repo, "--start", "2026-01-01", "--days", "60", "--seed", "7")
    out = both_runs(repo)
    assert {"predict", "monitor", "report"} <= ran_stages(out)
    first = json.loads((repo / "artifacts/monitor/report.json").read_text())
    sh(repo, "evergreen", "publish")
    model = (repo / "models/model.onnx").read_bytes()
    _simulate(repo, "--days", "4")  # days 60..63: still before the drift day
    before = _monitor_champion(repo)
    _simulate(repo, "--days", "14")  # days 64..77: the new regime's first 14 days
    within = _monitor_champion(repo)
    _simulate(repo, "--days", "8")  # days 78..85: the first published labels mature
    after = _monitor_champion(repo)
    assert (repo / "models/model.onnx").read_bytes() == model  # the champion was kept
    return {"repo": repo, "first": first, "before": before, "within": within, "after": after}


def test_no_drift_before_the_drift_day(loop: dict) -> None:
    for verdict in (loop["first"], loop["before"]):
        assert verdict["retrain_recommended"] is False, verdict["reasons"]
        assert verdict["reasons"] == []
        assert verdict["performance"]["snapshots"] == {}  # no label has matured yet


def test_the_regime_change_is_flagged_within_14_days_for_its_inputs(loop: dict) -> None:
    within = loop["within"]
    assert within["retrain_recommended"] is True
    flagged = {(r["kind"], r["column"]) for r in within["reasons"]}
    assert ("input_drift", "customers.monthly_price") in flagged, within["reasons"]


def test_drift_after_the_drift_day_recommends_retraining_with_its_reasons(loop: dict) -> None:
    after = loop["after"]
    assert after["retrain_recommended"] is True
    flagged = {(r["kind"], r["column"]) for r in after["reasons"]}
    # the simulator's regime change: the partner channel starts acquiring customers, the
    # standard plan's price rises
    assert ("input_drift", "customers.channel") in flagged
    assert ("input_drift", "customers.monthly_price") in flagged
    for r in after["reasons"]:
        keys = {"kind", "column", "statistic", "value", "threshold", "n_reference", "n_current"}
        assert keys <= set(r)
    # only what the model reads: ids, keys and timestamps are never reasons
    assert all(
        r["column"] not in ("events.event_id", "events.customer_id") for r in after["reasons"]
    )
    # the predictions published on day 59 and 63 have their labels now (+ 21 days)
    perf = after["performance"]["snapshots"]
    assert sorted(perf) == ["2026-03-01", "2026-03-05"]
    for m in perf.values():
        assert m["n"] > 500 and 0 < m["positives"] < m["n"] and 0.5 < m["roc_auc"] <= 1.0


def test_monitor_history_has_a_row_per_monitored_date(loop: dict) -> None:
    history = pd.read_csv(loop["repo"] / "metrics/monitor_history.csv")
    assert history["date"].tolist() == ["2026-03-01", "2026-03-05", "2026-03-19", "2026-03-27"]
    assert set(history["dataset"]) == {"shop"}
    assert history["retrain_recommended"].tolist() == [0, 0, 1, 1]
    assert history["live_roc_auc"].notna().tolist() == [False, False, False, True]
    plots = json.loads(sh(loop["repo"], "dvc", "plots", "show", "--json"))["data"]
    assert "live_roc_auc" in json.dumps(plots["Monitoring history"])


def test_publish_wrote_one_file_per_run(loop: dict) -> None:
    days = sorted(p.name for p in (loop["repo"] / "lake/predictions").iterdir())
    assert days == ["date=2026-03-01", "date=2026-03-05", "date=2026-03-19", "date=2026-03-27"]


def test_monitor_dispatch_calls_the_retrain_workflow(loop: dict) -> None:
    received: list[dict] = []

    class GitHub(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append({"path": self.path, "json": json.loads(body)})
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), GitHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {
        **e2e_env(),
        "GITHUB_API_URL": f"http://127.0.0.1:{server.server_port}",
        "EVERGREEN_GITHUB_TOKEN": "t0ken",
    }
    try:
        done = subprocess.run(
            ["evergreen", "monitor", "--dispatch", "--repo", "acme/churn"],
            cwd=loop["repo"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        server.shutdown()
        server.server_close()
    assert done.returncode == 0, done.stderr
    assert "RETRAIN recommended" in done.stdout
    assert [r["path"] for r in received] == [
        "/repos/acme/churn/actions/workflows/retrain.yml/dispatches"
    ]
    assert received[0]["json"]["ref"] == "main"


def test_report_renders_in_headless_chromium_with_its_sections(loop: dict) -> None:
    repo = loop["repo"]
    page = repo / "reports/report.html"
    text = page.read_text()
    assert "http://" not in text and "https://" not in text  # self-contained
    assert text.count("data:image/png;base64,") == 3
    markdown = (repo / "reports/report.md").read_text()
    for name in ("distribution.png", "segments.png", "trend.png"):
        assert f"figures/{name}" in markdown and (repo / "reports/figures" / name).is_file()
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} missing: `make test` installs Debian's chromium package")
    with tempfile.TemporaryDirectory() as profile:
        flags = [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
        ]
        shot = Path(profile) / "shot.png"
        done = run(repo, *flags, f"--screenshot={shot}", "--window-size=1200,2400", page.as_uri())
        assert shot.is_file(), done.stderr[-2000:]
        dom = run(repo, *flags, "--dump-dom", page.as_uri()).stdout
        pixels = np.asarray(Image.open(shot).convert("L"), dtype="float64")
        size = shot.stat().st_size
    assert pixels.std() > 20, "the screenshot is blank"
    for heading in (
        "Churn-risk distribution",
        "Expected revenue at risk by segment",
        "Top 20 at risk and their main drivers",
        "Trend against previous runs",
        "Monitoring",
    ):
        assert f"<h2>{heading}</h2>" in dom
    assert size > 10_000
