"""The backtest's page (`backtest.html`): the realised metric of each policy's model in
production over time, when each policy trained, and the table, drawn with the insights page's
own helpers (stages/lib/insights.py: figures as inline PNGs, the same HTML)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from stages.lib.insights import Page, Section, frame_table, png, render_html

TITLE = "Backtest: which retrain policy pays"
NAMES = {"roc_auc": "ROC AUC", "pr_auc": "PR AUC", "brier": "Brier score", "mae": "MAE", "r2": "R²"}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
HINDSIGHT = "best with hindsight, same trainings"


def metric_figure(payload: Mapping[str, Any]) -> bytes | None:
    """Top: the realised metric per step and policy; bottom: each policy's trainings (filled:
    promoted). None: no step was scored."""
    metric = payload["metric"]
    policies = payload["policies"]
    if not any(p["steps_scored"] for p in policies.values()):
        return None
    fig = Figure(figsize=(10, 5.2), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    for i, (name, p) in enumerate(policies.items()):
        dates = pd.to_datetime([r["date"] for r in p["series"]])
        values = np.array([np.nan if r.get(metric) is None else r[metric] for r in p["series"]])
        top.plot(dates, values, marker=MARKERS[i % len(MARKERS)], markersize=4, label=name)
        trained = [t for t in p["training_dates"]]
        for promoted, style in ((True, "full"), (False, "none")):
            when = pd.to_datetime([t["date"] for t in trained if t["promoted"] == promoted])
            if len(when):
                bottom.plot(
                    when,
                    [i] * len(when),
                    linestyle="none",
                    marker="|" if promoted else "x",
                    markersize=14 if promoted else 7,
                    color=f"C{i}",
                    fillstyle=style,
                )
    top.set_ylabel(f"realised {NAMES.get(metric, metric)}")
    top.set_title("the model in production, judged on matured labels")
    top.legend(loc="best")
    top.grid(alpha=0.3)
    bottom.set_yticks(range(len(policies)), list(policies))
    bottom.set_ylim(-0.6, len(policies) - 0.4)
    bottom.set_title("trainings (| promoted, x not blessed)")
    bottom.grid(axis="x", alpha=0.3)
    bottom.tick_params(axis="x", labelrotation=30)
    return png(fig)


def summary_table(payload: Mapping[str, Any]) -> pd.DataFrame:
    """One row per policy: its settings, mean metrics, trainings, promotions, CPU seconds, and
    the bound with hindsight at its number of trainings."""
    rows = []
    for name, p in payload["policies"].items():
        rule = []
        if p["every_days"] is not None:
            rule.append(f"every {p['every_days']} days")
        if p["monitor"]:
            rule.append(f"monitor (min gap {p['min_gap_days']} days)")
        rows.append(
            {
                "policy": name,
                "rule": " or ".join(rule) or "first model only",
                **{f"mean {NAMES.get(m, m)}": p[f"mean_{m}"] for m in payload["metrics"]},
                HINDSIGHT: p.get("hindsight_best"),
                "steps scored": p["steps_scored"],
                "trainings": p["trainings"],
                "promotions": p["promotions"],
                "CPU seconds": p["seconds"],
            }
        )
    return pd.DataFrame(rows)


def series_table(payload: Mapping[str, Any]) -> pd.DataFrame:
    """The realised headline metric per step (rows) and policy (columns); T: trained there."""
    metric = payload["metric"]
    out: dict[str, list[Any]] = {"step": payload["steps"], "snapshot": payload["snapshots"]}
    for name, p in payload["policies"].items():
        out[name] = [r.get(metric) for r in p["series"]]
        out[f"{name} trains"] = [
            ("promoted" if r.get("promoted") else "not blessed") if r["train"] else ""
            for r in p["series"]
        ]
    return pd.DataFrame(out)


def reading(payload: Mapping[str, Any]) -> list[str]:
    """How to read the page, with the monitor's and the schedule's comparison when both ran."""
    s = payload["settings"]
    metric = NAMES.get(payload["metric"], payload["metric"])
    better = "higher" if payload["higher_is_better"] else "lower"
    text = [
        f"Dataset `{payload['dataset']}` ({payload['task']}), lake {payload['lake']['first_day']}"
        f"..{payload['lake']['last_day']}, replayed every {s['step_days']} day(s) from "
        f"{s['start']} to {s['end']} ({s['steps']} steps). At each step every policy scores the "
        "prediction set with its model in production, runs the monitor on what had landed by "
        "then, and trains (then gates) when its rule says so; the first step trains for all.",
        f"A step's realised {metric} is its production model's on that step's prediction set, "
        f"judged once the labels matured ({s['label_horizon_days']} day horizon); the mean is "
        f"over the scored steps ({better} is better). Trainings cost: CPU seconds per policy, "
        "each training counted in full for every policy that ran it.",
    ]
    text.append(hindsight_reading(payload))
    for found in payload["comparisons"]:  # computed once, with the JSON (`_payload`)
        text.append(comparison_line(found, metric, bold=True))
    return text


def comparison_line(found: Mapping[str, Any], metric: str, *, bold: bool = False) -> str:
    """`a` vs `b`: the difference of the means, its paired interval, and the trainings."""
    na, nb = found["trainings"]
    a, b = (f"**{found['a']}**", f"**{found['b']}**") if bold else (found["a"], found["b"])
    verb = "better" if found["difference"] > 0 else "worse"
    if found["ci_low"] == found["ci_high"] == found["difference"] == 0:
        # every step's models answered alike (the same model kept, or an equal one)
        return f"{a} vs {b}: the same {metric} at every step ({na} trainings against {nb})."
    sure = ""
    if found.get("ci_low") is not None:
        unsure = found["ci_low"] < 0 < found["ci_high"]
        sure = (
            f", {found['confidence']:.0%} CI {found['ci_low']:+.4f} to {found['ci_high']:+.4f} "
            f"over {found['steps']} paired steps"
            + (": the backtest cannot tell them apart" if unsure else "")
        )
    return (
        f"{a} vs {b}: mean {metric} {abs(found['difference']):.4f} {verb}{sure} "
        f"({na} trainings against {nb})."
    )


def hindsight_reading(payload: Mapping[str, Any]) -> str:
    """What the hindsight column is: a bound on every policy, not one of them."""
    hindsight = payload.get("hindsight") or {}
    if not hindsight.get("available"):
        why = hindsight.get("why", "not computed")
        return f"No bound with hindsight ({HINDSIGHT}): {why}."
    metric = NAMES.get(payload["metric"], payload["metric"])
    text = (
        f"**{HINDSIGHT}** is a bound, not a policy: the best mean {metric} any choice of that "
        "many training days could have reached, chosen with perfect foresight of every "
        "model's realised metric and every model promoted (no gate). No policy can beat it at "
        "its number of trainings; the gap between a policy's mean and it is what a better "
        "choice of the same number of training days could still have won."
    )
    monitor = payload["policies"].get("monitor")
    if monitor and monitor["mean_metric"] is not None and monitor["hindsight_best"] is not None:
        text += (
            f" **monitor** vs the best with hindsight at its {monitor['trainings']} trainings: "
            f"{monitor['mean_metric']:.4f} against {monitor['hindsight_best']:.4f}."
        )
    return text


def build_page(payload: Mapping[str, Any]) -> Page:
    figure = metric_figure(payload)
    summary = frame_table(summary_table(payload), digits={"CPU seconds": 1})
    series = frame_table(series_table(payload), digits={n: 4 for n in payload["policies"]})
    return Page(
        sections=[
            Section(
                "policies",
                "Policies compared",
                reading(payload),
                figure="backtest.png" if figure else None,
                tables=(("", summary),),
            ),
            Section(
                "steps",
                "Step by step",
                [f"Realised {NAMES.get(payload['metric'], payload['metric'])} per step."],
                tables=(("", series),),
            ),
        ],
        figures={"backtest.png": figure} if figure else {},
    )


def render(payload: Mapping[str, Any]) -> str:
    page = build_page(payload)
    return render_html(f"{TITLE} ({payload['dataset']})", page.sections, page.figures)
