"""The insights page's section on the served requests: the shadow model's live record and the
training-serving skew, from the monitor's report (its `shadow` and `serving_skew`, written by
stages/lib/shadow.py and stages/lib/skew.py). One section builder for `insights.build_page`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stages.lib.insights import Page, PageInputs, Section, Table

TITLE = "Shadow model and served inputs"


def _verdict_text(record: Mapping[str, Any]) -> list[str]:
    if record.get("status") != "compared":
        return [f"Shadow model: {record.get('detail') or 'no record'}."]
    a = record["agreement"]
    text = [
        f"Shadow `{record['shadow_model_version']}` beside champion "
        f"`{record['model_version']}` on {record['rows']} served rows "
        f"({record['first']} to {record['last']})."
    ]
    if "agreement" in a and a["agreement"] is not None:
        text.append(
            f"Their decisions agree on {a['agreement']:.1%} of the rows at threshold "
            f"{a['threshold']:g} (only the champion positive: {a['champion_only_positive']}; "
            f"only the shadow: {a['shadow_only_positive']})."
        )
    elif a.get("mean_absolute_difference") is not None:
        text.append(f"Their predictions differ by {a['mean_absolute_difference']} on average.")
    text.append(f"Score PSI of the shadow against the champion: {record['score_psi']['value']}.")
    realised = record.get("realised") or {}
    if realised.get("metrics"):
        text.append(
            f"Verdict: **{realised['verdict']}** on {realised['n']} labelled requests "
            f"({realised['metric']}, paired bootstrap at {realised['confidence']:.0%})."
        )
    elif realised:
        text.append(f"Verdict: **{realised['verdict']}** ({realised.get('detail', '')}).")
    return text


def _metrics_table(record: Mapping[str, Any]) -> Table:
    metrics = (record.get("realised") or {}).get("metrics") or {}
    columns = ["metric", "champion", "shadow", "improvement", "ci_low", "ci_high"]
    return Table(
        columns, [[name, *(str(m[c]) for c in columns[1:])] for name, m in metrics.items()]
    )


def _skew_text(skew: Mapping[str, Any]) -> list[str]:
    if skew.get("status") != "compared":
        return [f"Served inputs against the training data: {skew.get('detail') or 'not compared'}."]
    skewed = skew["skewed"]
    return [
        f"Served inputs against the training data ({skew['n_served']} served rows, "
        f"{skew['n_training']} training rows): "
        + (f"**{len(skewed)} skewed** ({', '.join(skewed)})." if skewed else "none skewed.")
    ]


def _skew_table(skew: Mapping[str, Any]) -> Table:
    columns = ["input", "statistic", "value", "p_value", "skewed", "outside training"]
    rows = []
    for name, c in (skew.get("inputs") or {}).items():
        outside = c.get("outside_training") or {}
        rows.append(
            [name, str(c["statistic"]), str(c["value"]), str(c["p_value"]),
             "yes" if c["skewed"] else "no", str(outside.get("count", "–"))]
        )  # fmt: skip
    return Table(columns, rows)


def served_section(inputs: PageInputs) -> Page:
    """The shadow's verdict and record, and the serving skew per input; left out when the
    monitor's report has neither (a report written before they existed)."""
    record = inputs.monitor.get("shadow")
    skew = inputs.monitor.get("serving_skew")
    if record is None and skew is None:
        return Page()
    tables = [("Realised metrics on the same requests", _metrics_table(record or {}))]
    tables.append(("Served inputs against the training data", _skew_table(skew or {})))
    section = Section(
        "shadow",
        TITLE,
        [*_verdict_text(record or {}), *_skew_text(skew or {})],
        tables=tuple((title, t) for title, t in tables if t.rows),
    )
    return Page([section], {})
