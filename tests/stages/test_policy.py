"""Retrain policies (stages/lib/policy.py): each trigger, the gap, and one-line config errors."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest

from stages.lib.params import load_params
from stages.lib.policy import (
    Policy,
    PolicyError,
    last_training,
    policies_from_params,
    production_policy,
)

DAY = dt.date(2026, 3, 1)
ROOT = Path(__file__).resolve().parents[2]


def later(days: int) -> dt.date:
    return DAY + dt.timedelta(days=days)


def test_with_no_model_in_production_every_policy_trains():
    for policy in (Policy("never"), Policy("s", every_days=7), Policy("m", monitor=True)):
        decision = policy.decide(DAY, None, monitor_recommends=False)
        assert decision.train and decision.reason == "no model in production"


def test_never_never_retrains_even_when_the_monitor_asks():
    decision = Policy("never").decide(later(400), DAY, monitor_recommends=True)
    assert not decision.train


def test_a_schedule_trains_on_its_day_and_not_before():
    policy = Policy("weekly", every_days=7)
    assert not policy.decide(later(6), DAY, False).train
    assert "next training in 1 day" in policy.decide(later(6), DAY, False).reason
    assert policy.decide(later(7), DAY, False).train


def test_the_monitor_policy_waits_out_its_gap():
    policy = Policy("monitor", monitor=True, min_gap_days=14)
    assert not policy.decide(later(30), DAY, False).train
    early = policy.decide(later(10), DAY, True)
    assert not early.train and "min_gap_days 14" in early.reason
    assert policy.decide(later(14), DAY, True).train


def test_a_combination_trains_on_either_trigger():
    policy = Policy("both", every_days=28, monitor=True, min_gap_days=7)
    assert policy.decide(later(28), DAY, False).train
    assert policy.decide(later(8), DAY, True).train
    assert not policy.decide(later(8), DAY, False).train


def test_the_clock_runs_from_the_later_of_the_champions_training_and_the_last_attempt():
    trained, attempt = dt.date(2026, 3, 1), dt.date(2026, 3, 8)
    assert last_training(trained, attempt) == attempt  # a refused challenger's run
    assert last_training(attempt, trained) == attempt  # the champion is newer than the record
    assert last_training(trained, None) == trained
    assert last_training(None, attempt) is None  # no champion: the policies train


def test_the_committed_params_hold_the_documented_policies():
    params = load_params(ROOT / "params.yaml")
    policies = policies_from_params(params)
    assert {"never", "every_7_days", "monitor"} <= set(policies)
    assert policies["every_7_days"] == Policy("every_7_days", every_days=7)
    assert production_policy(params).name == params["retrain"]["policy"]


@pytest.mark.parametrize(
    ("retrain", "message"),
    [
        ({"policy": "x", "policies": {"x": {"every_days": 0}}}, "retrain.policies.x.every_days"),
        ({"policy": "x", "policies": {"x": {"monitor": "yes"}}}, "retrain.policies.x.monitor"),
        ({"policy": "x", "policies": {"x": {"evry_days": 7}}}, "retrain.policies.x.evry_days"),
        ({"policy": "y", "policies": {"x": {}}}, "retrain.policy: expected one of x"),
        ({"policy": "x", "policies": []}, "retrain.policies: expected a mapping"),
    ],
)
def test_a_bad_policy_is_one_line_naming_its_key(retrain, message):
    with pytest.raises(PolicyError) as err:
        production_policy({"retrain": retrain})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_evergreen_params_refuses_a_bad_policy_in_one_line(tmp_path):
    out = tmp_path / "params.yaml"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "stages.cli",
            "params",
            "retrain.policy=weekly",
            "--output",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2, proc.stderr
    assert "retrain.policy" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_a_refused_training_run_restarts_the_production_clock(tmp_path, monkeypatch):
    """`evergreen run daily`'s decision counts from the later of the champion's training and
    the last TRAIN decision (reports/retrain.json): a challenger the gate refused does not make
    the next day train again while the monitor still recommends."""
    import json
    import shutil

    from stages.cli.run import ATTEMPT, decide, last_attempt, record_attempt

    monkeypatch.chdir(tmp_path)
    shutil.copy(ROOT / "params.yaml", "params.yaml")  # shop: monitor, min_gap_days 14
    champion = Path("models/champion")
    champion.mkdir(parents=True)
    (champion / "model.onnx").write_bytes(b"graph")
    record = {"trained_through": "2026-03-01", "dataset": "shop"}
    (champion / "champion.json").write_text(json.dumps(record))
    Path("metrics").mkdir()

    def day(date: str) -> None:
        monitor = {"date": date, "retrain_recommended": True}
        Path("metrics/monitor.json").write_text(json.dumps(monitor))

    day("2026-03-20")
    first = decide()
    assert first.train and first.dataset == "shop" and first.today == dt.date(2026, 3, 20)
    record_attempt(first, ran_here=True)  # the training run starts; its challenger is refused
    assert last_attempt("shop") == dt.date(2026, 3, 20) and last_attempt("bank") is None
    day("2026-03-21")
    nxt = decide()
    assert not nxt.train
    assert "the last training run, 2026-03-20, did not replace the champion" in nxt.reason
    day("2026-04-03")
    assert decide().train  # min_gap_days after the attempt
    # a champion trained after the attempt is the clock again
    record["trained_through"] = "2026-04-01"
    (champion / "champion.json").write_text(json.dumps(record))
    assert not decide().train and "did not replace" not in decide().reason
    # an attempt of another dataset (left by `evergreen new`) is not this one's
    ATTEMPT.write_text(json.dumps({"dataset": "bank", "date": "2026-04-02"}))
    day("2026-04-20")
    assert decide().train
    # `run daily` without --train only requests the run (the workflow dispatches it): a
    # `--train` the same day runs it, where the request alone would hold it for 14 days
    requested = decide()
    record_attempt(requested, ran_here=False)
    assert decide(train_here=True).train
    later = decide()
    assert not later.train
    assert "the training run requested, 2026-04-20, did not replace the champion" in later.reason
    record_attempt(decide(train_here=True), ran_here=True)
    assert not decide(train_here=True).train  # ran here today: not again
    ATTEMPT.write_text("{not json")
    with pytest.raises(ValueError, match=r"reports/retrain\.json: expected"):
        decide()


def test_evergreen_run_starts_without_model_loading_and_writes_step_outputs(tmp_path, monkeypatch):
    """`evergreen run prediction` every day: its process must not import skops and torch
    (~3 s, through promote's gate) to print a step output."""
    from stages.lib.io import github_output

    heavy = "('torch', 'skops.io', 'sklearn')"
    code = f"import sys, stages.cli.run; print(*(m in sys.modules for m in {heavy}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False", "False"]
    out = tmp_path / "github_output"
    monkeypatch.setenv("GITHUB_OUTPUT", str(out))
    github_output({"train": "true"})
    github_output({"version": "v0.2.0"})
    assert out.read_text() == "train=true\nversion=v0.2.0\n"
