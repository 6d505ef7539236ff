"""`evergreen report pr`: the pull request's review comment, challenger vs champion, in Markdown.

    evergreen report pr --base main --out build/report.md

Rendered offline from the files DVC tracks as metrics and plots: the challenger's are the
workspace's, the champion's are the same files committed on `--base` (`git show BASE:PATH`;
they are `cache: false` outputs, so git holds them and no DVC remote is needed). The metrics
files hold the scalars (compared main vs branch); the tables behind them are report data read
from the workspace only (DVC-cached outputs, or the gate's `reports/gate.json`). Sections:
test metrics with deltas, the params diff, the gate checks (`metrics/gate.json`, each check's
numbers from `reports/gate.json`), a data summary (`metrics/validation.json` with the per-table
counts and quarantine reasons of the validate stage's report, `metrics/data_drift.json` with
the drifted columns of `artifacts/drift/report.json`) and the ROC, precision-recall and
calibration curves of both models.

The tables and plots follow the task's kind, as the metric files do: a regression's test
metrics are MAE, RMSE, R² and MAPE (lower is better for all but R²), its plot the residual
scatter (`residuals.json`, actual - predicted by prediction, which a classification also
writes: label - probability); a plot file a kind writes empty (a regression's ROC) is left out.

The curves are text charts inside the comment: no image leaves the runner, so nothing is put on
a public third-party host (cml#291, cml#1377), the report workflow needs no write access to the
branch, forks and private repositories render the same, and the chart is built from the very
numbers shown (`dvc plots diff BASE` draws the same files as HTML locally).

Only the challenger's test metrics are required (exit 2 without them); every other missing file
is named in the report, so a first run (no champion on BASE) or a PR without a gate run still
gets a report.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from stages.cli.gate import recorded_md5
from stages.lib.gitref import commit_of
from stages.lib.io import write_bytes_atomic

MARKER = "<!-- evergreen-report -->"
# test metrics where a lower value is the better one; the rest are higher-is-better, or counts
LOWER_IS_BETTER = frozenset({"brier", "log_loss", "mae", "rmse", "mape"})
# counts and descriptive values: shown with their change, never called better or worse
COUNTS = frozenset(
    {"n", "positives", "positive_rate", "mape_rows", "target_mean", "prediction_mean"}
)
# dvc.yaml plot templates drawn as curves (ROC, PR, calibration); the others (bars, confusion,
# scatter of tuning trials) do not compare as two lines
CURVE_TEMPLATES = frozenset({"simple", "linear"})
# a scatter of a JSON plot file (a regression's residuals) is drawn as points
SCATTER_TEMPLATE = "scatter"
CHART_WIDTH, CHART_HEIGHT = 56, 16
CHAMPION_MARK, CHALLENGER_MARK, BOTH_MARK = "o", "*", "@"


class ReportError(ValueError):
    """A file the report needs is missing or unreadable; the message names it."""


# --- reading the two sides ----------------------------------------------------------------------


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=False)


@dataclass(frozen=True)
class Side:
    """Where one model's files are read: the workspace (commit None) or a commit."""

    repo: Path
    commit: str | None = None

    def text(self, path: str) -> str | None:
        if self.commit is None:
            file = self.repo / path
            return file.read_text() if file.is_file() else None
        done = _git(self.repo, "show", f"{self.commit}:{path}")
        return done.stdout if done.returncode == 0 else None

    def where(self, path: str) -> str:
        return path if self.commit is None else f"{path} at {self.commit[:12]}"

    def json(self, path: str) -> Any:
        raw = self.text(path)
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ReportError(f"{self.where(path)}: not valid JSON ({exc})") from exc

    def yaml(self, path: str) -> Any:
        raw = self.text(path)
        if raw is None:
            return None
        try:
            return yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ReportError(f"{self.where(path)}: not valid YAML ({exc})") from exc


# --- the pure parts: numbers to Markdown --------------------------------------------------------


def _num(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        # the files hold 6-digit rounded floats: the shortest repr shows them as written
        return repr(value)
    return str(value)


def delta(new: Any, old: Any) -> float | None:
    """new - old rounded to the metric files' 6 digits, None when either is not a number."""
    numbers = (int, float)
    if not isinstance(new, numbers) or not isinstance(old, numbers):
        return None
    if isinstance(new, bool) or isinstance(old, bool):
        return None
    return round(float(new) - float(old), 6) + 0.0


def _arrow(name: str, change: float | None) -> str:
    if change is None or change == 0 or name in COUNTS:
        return ""
    better = change < 0 if name in LOWER_IS_BETTER else change > 0
    return " ▲ better" if better else " ▼ worse"


def metrics_table(challenger: Mapping[str, Any], champion: Mapping[str, Any] | None) -> str:
    """Every test metric of the challenger with the champion's value and the change."""
    old = champion or {}
    rows = ["| metric | champion | challenger | Δ |", "|---|---:|---:|---:|"]
    for name in sorted(challenger, key=lambda k: (k in COUNTS, k)):
        change = delta(challenger[name], old.get(name))
        both_int = isinstance(challenger[name], int) and isinstance(old.get(name), int)
        shown = (
            "—"
            if change is None
            else f"{int(change):+d}"
            if both_int
            else f"{change:+.6f}{_arrow(name, change)}"
        )
        rows.append(f"| {name} | {_num(old.get(name))} | {_num(challenger[name])} | {shown} |")
    return "\n".join(rows)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys; lists stay whole values."""
    if not isinstance(tree, Mapping):
        return {prefix: tree} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, dotted))
        else:
            out[dotted] = value
    return out


def params_diff(base: Mapping[str, Any], head: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, base value, head value) for every dotted key that differs; a missing side is
    reported as the string '(absent)'."""
    old, new = flatten(base), flatten(head)
    absent = "(absent)"
    return [
        (key, old.get(key, absent), new.get(key, absent))
        for key in sorted(set(old) | set(new))
        if old.get(key, absent) != new.get(key, absent)
    ]


def _inline(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return "`" + text.replace("`", "'").replace("|", "\\|") + "`"


def params_section(base: Mapping[str, Any] | None, head: Mapping[str, Any] | None) -> str:
    if head is None:
        return "_params.yaml is not in the workspace._"
    if base is None:
        return "_No params.yaml on the base: nothing to compare._"
    changes = params_diff(base, head)
    if not changes:
        return "No parameter changed."
    rows = ["| param | champion | challenger |", "|---|---|---|"]
    rows += [f"| `{k}` | {_inline(a)} | {_inline(b)} |" for k, a, b in changes]
    return "\n".join(rows)


def _interval(check: Mapping[str, Any]) -> str:
    """A comparison's difference and interval (`+0.012 [-0.004, +0.028] 95%`), or —."""
    diff, low, high = (check.get(k) for k in ("difference", "ci_low", "ci_high"))
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (diff, low, high)):
        return "—"
    confidence = check.get("confidence")
    at = f" {confidence * 100:g}%" if isinstance(confidence, int | float) else ""
    return f"{diff:+} [{low:+}, {high:+}]{at}"


def _reference(check: Mapping[str, Any]) -> str:
    """The champion's value, or the naive baseline's for a baseline check."""
    if check.get("champion") is None and check.get("baseline") is not None:
        return f"{_num(check.get('baseline'))} (baseline)"
    return _num(check.get("champion"))


def gate_section(
    gate: Mapping[str, Any] | None,
    model_md5: str | None,
    detail: Mapping[str, Any] | None = None,
    *,
    dataset: str | None = None,
) -> str:
    """The verdict and one ✅/❌ line per check (with a comparison's difference, its interval
    and the smallest difference the test set can detect), and whether it judged this model.

    `gate` is the verdict (metrics/gate.json), `detail` the gate's whole report
    (reports/gate.json) with each check's numbers; without it the checks show pass or fail."""
    if gate is None:
        return "_metrics/gate.json not found: run `evergreen gate` first; no verdict._"
    checks = gate.get("checks") or ()
    if isinstance(checks, Mapping):
        judged_md5 = (gate.get("challenger") or {}).get("model_md5")
        same = detail is not None and (detail.get("challenger") or {}).get("model_md5") == (
            judged_md5
        )
        checks = (
            detail.get("checks") or ()
            if same
            else [{"name": name, "passed": passed} for name, passed in checks.items()]
        )
        gate = {**(detail if same else {}), **gate}
    lines = [f"**{'✅ blessed' if gate.get('blessed') else '❌ not blessed'}**"]
    champion = gate.get("champion")
    if champion:
        lines[0] += f" against `{champion.get('ref')}` @ `{str(champion.get('commit'))[:12]}`"
    elif gate.get("champion_not_comparable"):
        lines.append(
            f"No comparable champion ({gate['champion_not_comparable']}): judged as with no "
            "champion, against a naive baseline and any absolute floors."
        )
    elif gate.get("champion_missing"):
        lines.append(
            f"No champion ({gate['champion_missing']}): judged against a naive baseline and "
            "any absolute floors."
        )
    boot = gate.get("bootstrap")
    if isinstance(boot, Mapping) and boot.get("resamples"):
        confidence = boot.get("confidence")
        at = f"{confidence * 100:g}% " if isinstance(confidence, int | float) else ""
        lines.append(
            f"Paired bootstrap: {boot.get('resamples')} resamples of {boot.get('rows')} test "
            f"rows, seed {boot.get('seed')}; Δ is the challenger's difference (positive: "
            f"better) with its {at}interval; detectable = {boot.get('detectable')}."
        )
    judged = (gate.get("challenger") or {}).get("model_md5")
    if model_md5 is not None and judged != model_md5:
        lines.append(
            f"⚠️ the verdict is about model `{judged}` but dvc.lock records `{model_md5}`: "
            "rerun `evergreen gate`."
        )
    if dataset is not None and gate.get("dataset") not in (None, dataset):
        lines.append(
            f"⚠️ the verdict is about dataset `{gate.get('dataset')}`, this workspace's is "
            f"`{dataset}`: rerun `evergreen gate`."
        )
    lines += [
        "",
        "| result | check | challenger | champion | threshold | Δ [interval] | detectable "
        "| detail |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for check in checks:
        mark = "✅" if check.get("passed") else "❌"
        lines.append(
            f"| {mark} | {check.get('name')} | {_num(check.get('challenger'))} | "
            f"{_reference(check)} | {_num(check.get('threshold'))} | {_interval(check)} | "
            f"{_num(check.get('detectable'))} | "
            f"{str(check.get('detail', '')).replace('|', '/')} |"
        )
    return "\n".join(lines)


VALIDATION_ROWS = (
    "rows_in",
    "rows_valid",
    "rows_quarantined",
    "rows_null_key",
    "partitions",
    "partitions_faulty",
    "missing_days",
)
TABLE_ROWS = ("rows_in", "rows_valid", "rows_quarantined", "partitions_faulty", "missing_days")


def validation_table(
    new: Mapping[str, Any],
    old: Mapping[str, Any] | None,
    report: Mapping[str, Any] | None = None,
) -> str:
    """Row counts overall, with the change since the champion's data (metrics/validation.json),
    then per table the challenger's (the validate stage's report, in the workspace only)."""
    base = old or {}
    rows = ["| data | champion | challenger | Δ |", "|---|---:|---:|---:|"]

    def row(label: str, a: Any, b: Any) -> None:
        change = delta(b, a)
        rows.append(
            f"| {label} | {_num(a)} | {_num(b)} | {'—' if change is None else f'{change:+g}'} |"
        )

    for key in VALIDATION_ROWS:
        if key in new or key in base:
            row(key, base.get(key), new.get(key))
    for table, entry in sorted((report or {}).items()):
        totals = (entry or {}).get("totals") or {}
        for key in TABLE_ROWS:
            if key in totals:
                row(f"{table}.{key}", None, totals[key])
    return "\n".join(rows)


def quarantine_reasons(report: Mapping[str, Any]) -> list[str]:
    """From the validate stage's report: per table, the failing checks summed over partitions,
    the partitions quarantined whole (with their fault) and the missing days."""
    lines = []
    for table in sorted(report):
        entry = report[table] or {}
        checks: dict[str, int] = {}
        faults = []
        for partition, summary in sorted((entry.get("partitions") or {}).items()):
            for check, count in (summary.get("top_checks") or {}).items():
                checks[check] = checks.get(check, 0) + int(count)
            if summary.get("fault"):
                faults.append(f"{partition}: {summary['fault']}")
        if checks:
            listed = ", ".join(
                f"`{c}` ×{n}" for c, n in sorted(checks.items(), key=lambda kv: (-kv[1], kv[0]))
            )
            lines.append(f"- {table}: failing checks {listed}")
        lines += [f"- {table}: partition {f}" for f in faults]
        if entry.get("missing_days"):
            lines.append(f"- {table}: missing days {', '.join(entry['missing_days'])}")
    return lines


def drift_lines(drift: Mapping[str, Any], report: Mapping[str, Any] | None = None) -> list[str]:
    """The overall flag (metrics/data_drift.json), then per table the rows-per-day change and
    each drifted column (the drift stage's report, `report`; a report-shaped `drift` also
    serves)."""
    lines = [
        f"Drift: **{'drifted' if drift.get('drifted') else 'no drift'}** (latest partitions vs "
        f"the training period up to {drift.get('reference_until', '?')})"
    ]
    tables = (report or drift).get("tables") or {}
    for table, entry in sorted(tables.items()):
        columns = entry.get("columns") or {}
        # the monitor's roles: ids, free text, seasonal and non-input columns move by
        # construction; they are named apart, not counted (a report without roles: all count)
        judged = {c: v for c, v in columns.items() if v.get("role", "input") == "input"}
        flagged = sorted(c for c, v in judged.items() if v.get("drifted"))
        moved = sorted(c for c, v in columns.items() if v.get("drifted") and c not in judged)
        rows = entry.get("rows") or {}
        mark = "⚠️" if entry.get("drifted") else "·"
        line = f"- {mark} {table}: {len(flagged)} of {len(judged)} input column(s) drifted"
        if flagged:
            line += ": " + ", ".join(
                f"`{c}` {columns[c].get('metric')} {_num(columns[c].get('value'))} > "
                f"{_num(columns[c].get('threshold'))}"
                for c in flagged
            )
        if moved:
            line += "; moved, not counted: " + ", ".join(
                f"`{c}` ({columns[c]['role']})" for c in moved
            )
        if rows:
            line += (
                f"; rows/day {_num(rows.get('reference_median'))} → "
                f"{_num(rows.get('current_median'))}"
                + (" (drifted)" if rows.get("drifted") else "")
            )
        lines.append(line)
    return lines


def data_section(
    validation: Mapping[str, Any] | None,
    base_validation: Mapping[str, Any] | None,
    validate_report: Mapping[str, Any] | None,
    drift: Mapping[str, Any] | None,
    report_path: str,
    drift_report: Mapping[str, Any] | None = None,
    drift_report_path: str = "artifacts/drift/report.json",
) -> str:
    parts = []
    if validation is None:
        parts.append("_metrics/validation.json not found: no validation counts._")
    else:
        parts.append(validation_table(validation, base_validation, validate_report))
        if validation.get("rows_quarantined"):
            if validate_report is None:
                parts.append(
                    f"Quarantine reasons: {report_path} is not in the workspace (`dvc pull` "
                    "restores it)."
                )
            else:
                reasons = quarantine_reasons(validate_report)
                parts.append("Quarantined, and why:\n" + ("\n".join(reasons) or "- (no detail)"))
        else:
            parts.append("Nothing quarantined.")
    if drift is None:
        parts.append("_metrics/data_drift.json not found: no drift report._")
    else:
        lines = drift_lines(drift, drift_report)
        if drift_report is None and "tables" not in drift:
            lines.append(
                f"Per column: {drift_report_path} is not in the workspace (`dvc pull` restores it)."
            )
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


Points = list[tuple[float, float]]


def curve_points(payload: Any, x: str, y: str, where: str) -> Points:
    """(x, y) pairs of a DVC JSON plot file: {"name": [{x: .., y: ..}, ...]} or a bare list."""
    records = payload
    if isinstance(payload, Mapping):
        lists = [v for v in payload.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise ReportError(f"{where}: expected one list of points, found {len(lists)}")
        records = lists[0]
    if not isinstance(records, list):
        raise ReportError(f"{where}: expected a list of points")
    points = []
    for i, record in enumerate(records):
        try:
            points.append((float(record[x]), float(record[y])))
        except (KeyError, TypeError, ValueError) as exc:
            raise ReportError(f"{where}: point {i} has no numeric '{x}'/'{y}' ({exc})") from exc
    return points


def _cells(points: Points, box: tuple[float, float, float, float]) -> set[tuple[int, int]]:
    """Grid cells the polyline through `points` passes, sampled finely enough to be connected."""
    x0, x1, y0, y1 = box
    sx = (CHART_WIDTH - 1) / ((x1 - x0) or 1.0)
    sy = (CHART_HEIGHT - 1) / ((y1 - y0) or 1.0)
    cells = set()
    for (ax, ay), (bx, by) in zip(points, points[1:] or points, strict=False):
        steps = max(1, int(max(abs(bx - ax) * sx, abs(by - ay) * sy) * 2))
        for k in range(steps + 1):
            t = k / steps
            col = round((ax + (bx - ax) * t - x0) * sx)
            row = round((ay + (by - ay) * t - y0) * sy)
            cells.add((min(max(col, 0), CHART_WIDTH - 1), min(max(row, 0), CHART_HEIGHT - 1)))
    return cells


def _dots(points: Points, box: tuple[float, float, float, float]) -> set[tuple[int, int]]:
    """Grid cells of the points themselves (a scatter)."""
    return set().union(*(_cells([p], box) for p in points)) if points else set()


def text_chart(
    champion: Points | None, challenger: Points, x: str, y: str, *, scatter: bool = False
) -> str:
    """Both curves (or, `scatter`, both sets of points) on one character grid (champion o,
    challenger *, both @)."""
    every = [*challenger, *(champion or [])]
    xs, ys = [p[0] for p in every], [p[1] for p in every]
    unit = all(0.0 <= v <= 1.0 for v in [*xs, *ys])
    box = (0.0, 1.0, 0.0, 1.0) if unit else (min(xs), max(xs), min(ys), max(ys))
    draw = _dots if scatter else _cells
    new = draw(challenger, box) if challenger else set()
    old = draw(champion, box) if champion else set()
    lines = []
    for row in range(CHART_HEIGHT - 1, -1, -1):
        label = (
            f"{box[3]:>5.2f}"
            if row == CHART_HEIGHT - 1
            else (f"{box[2]:>5.2f}" if row == 0 else " " * 5)
        )
        chars = []
        for col in range(CHART_WIDTH):
            here = (col, row)
            mark = (
                BOTH_MARK
                if here in new and here in old
                else (CHALLENGER_MARK if here in new else CHAMPION_MARK if here in old else " ")
            )
            chars.append(mark)
        lines.append(f"{label} |{''.join(chars)}")
    lines.append(" " * 6 + "+" + "-" * CHART_WIDTH)
    left, right = f"{box[0]:.2f}", f"{box[1]:.2f}"
    lines.append(" " * 7 + left + f"{x:^{CHART_WIDTH - len(left) - len(right)}}" + right)
    legend = f"y: {y}   {CHALLENGER_MARK} challenger"
    if champion:
        legend += f"   {CHAMPION_MARK} champion   {BOTH_MARK} both"
    lines.append(legend)
    return "\n".join(lines)


@dataclass(frozen=True)
class Plot:
    path: str
    title: str
    x: str
    y: str
    scatter: bool = False


def curve_plots(dvc_yaml: Mapping[str, Any]) -> list[Plot]:
    """The curve plots dvc.yaml declares (template simple or linear, with x and y), and the
    scatter plots of JSON files (a regression's residuals; trials.csv is a table)."""
    plots = []
    for stage in (dvc_yaml.get("stages") or {}).values():
        for entry in stage.get("plots") or ():
            if not isinstance(entry, Mapping):
                continue
            for path, spec in entry.items():
                spec = spec or {}
                template = spec.get("template")
                scatter = template == SCATTER_TEMPLATE and str(path).endswith(".json")
                if (template in CURVE_TEMPLATES or scatter) and spec.get("x") and spec.get("y"):
                    title = spec.get("title") or path
                    plots.append(Plot(path, title, spec["x"], spec["y"], scatter=scatter))
    return plots


def plots_section(plots: Sequence[Plot], head: Side, base: Side | None) -> str:
    if not plots:
        return "_dvc.yaml declares no curve plots._"
    parts = []
    for plot in plots:
        new = head.json(plot.path)
        if new is None:
            parts.append(f"**{plot.title}**: {plot.path} not found in the workspace.")
            continue
        challenger = curve_points(new, plot.x, plot.y, head.where(plot.path))
        if not challenger:
            # the other kind's plot (a regression's ROC)
            continue
        old = None if base is None else base.json(plot.path)
        champion = None if old is None else curve_points(old, plot.x, plot.y, base.where(plot.path))
        champion = champion or None
        note = "" if champion is not None or base is None else " (no champion curve on the base)"
        chart = text_chart(champion, challenger, plot.x, plot.y, scatter=plot.scatter)
        parts.append(f"**{plot.title}**{note}\n\n```text\n{chart}\n```")
    return "\n\n".join(parts)


# --- assembling ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Paths:
    evaluate: str = "metrics/evaluate.json"
    gate: str = "metrics/gate.json"
    gate_report: str = "reports/gate.json"
    validation: str = "metrics/validation.json"
    drift: str = "metrics/data_drift.json"
    validate_report: str = "artifacts/validate/report.json"
    drift_report: str = "artifacts/drift/report.json"
    params: str = "params.yaml"
    lock: str = "dvc.lock"
    dvc_yaml: str = "dvc.yaml"
    model: str = "models/model.skops"


def _dataset_name(params: Any) -> str | None:
    """The dataset a params file is about (`dataset.name`), or None when it names none."""
    dataset = params.get("dataset") if isinstance(params, Mapping) else None
    name = dataset.get("name") if isinstance(dataset, Mapping) else None
    return None if name is None else str(name)


def build_report(repo: Path, base_ref: str, paths: Paths = Paths()) -> str:
    """The whole Markdown report; ReportError when the challenger's metrics are missing."""
    head = Side(repo)
    challenger = head.json(paths.evaluate)
    if challenger is None:
        raise ReportError(
            f"{paths.evaluate}: the challenger's test metrics are missing (run `dvc repro`)"
        )
    # None: a first run, no champion yet
    commit = commit_of(base_ref, repo)
    base = None if commit is None else Side(repo, commit)
    champion = None if base is None else base.json(paths.evaluate)
    dataset = _dataset_name(head.yaml(paths.params))
    base_dataset = None if base is None else _dataset_name(base.yaml(paths.params))

    if base is None:
        against = f"No champion: git ref `{base_ref}` not found (a first run). Challenger only."
    elif base_dataset not in (None, dataset):
        # another project's state (a clone started for a new dataset): nothing to compare with
        against = (
            f"No comparable champion: `{base_ref}` @ `{commit[:12]}` holds dataset "
            f"`{base_dataset}`, this branch's is `{dataset}`. Challenger only."
        )
        base, champion = None, None
    elif champion is None:
        against = (
            f"Champion: `{base_ref}` @ `{commit[:12]}` has no {paths.evaluate}: challenger only."
        )
    else:
        against = f"Champion: `{base_ref}` @ `{commit[:12]}`. Challenger: this branch's workspace."
    lock = head.yaml(paths.lock)
    model_md5 = None if lock is None else recorded_md5(lock, paths.model)
    dvc_yaml = head.yaml(paths.dvc_yaml) or {}
    sections = [
        MARKER,
        "## Evergreen: challenger vs champion",
        against,
        "### Gate",
        gate_section(
            head.json(paths.gate), model_md5, head.json(paths.gate_report), dataset=dataset
        ),
        "### Test metrics",
        metrics_table(challenger, champion),
        "### Params",
        params_section(None if base is None else base.yaml(paths.params), head.yaml(paths.params)),
        "### Data",
        data_section(
            head.json(paths.validation),
            None if base is None else base.json(paths.validation),
            head.json(paths.validate_report),
            head.json(paths.drift),
            paths.validate_report,
            head.json(paths.drift_report),
            paths.drift_report,
        ),
        "### Curves (test split)",
        plots_section(curve_plots(dvc_yaml), head, base),
    ]
    return "\n\n".join(sections) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="evergreen report pr",
        description="Write the pull request's report: challenger (workspace) vs champion (BASE).",
    )
    parser.add_argument("--base", default="main", help="git ref of the champion (default main)")
    parser.add_argument("--out", type=Path, required=True, help="Markdown file to write")
    parser.add_argument("--repo", type=Path, default=Path("."), help="git + DVC repo root")
    args = parser.parse_args(argv)
    try:
        text = build_report(args.repo, args.base)
    except ReportError as exc:
        print(f"report pr: {exc}", file=sys.stderr)
        return 2
    write_bytes_atomic(text.encode(), args.out)
    print(f"report pr: wrote {args.out} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
