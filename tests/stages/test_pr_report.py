"""`evergreen report pr` on a real temporary git repository: the champion's metric and plot files
committed on main, the challenger's in the workspace of a branch."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from stages.cli.pr_report import curve_plots, main, params_diff, text_chart

ROOT = Path(__file__).resolve().parents[2]
# the committed demo state (not the workspace, which other work may be rewriting)
FILES = (
    "metrics/evaluate.json",
    "metrics/validation.json",
    "metrics/data_drift.json",
    "plots/roc.json",
    "plots/pr.json",
    "plots/calibration.json",
    "params.yaml",
)
DVC_YAML = {
    "stages": {
        "evaluate": {
            "cmd": "true",
            "plots": [
                {"plots/roc.json": {"template": "simple", "x": "fpr", "y": "tpr", "title": "ROC"}},
                {"plots/pr.json": {"template": "simple", "x": "recall", "y": "precision"}},
                {"plots/calibration.json": {"template": "linear", "x": "mean_predicted",
                                            "y": "observed_rate", "title": "Calibration"}},
                {"plots/confusion.csv": {"template": "confusion", "x": "actual", "y": "predicted"}},
            ],
        }
    }
}  # fmt: skip


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def committed_demo(path: str) -> str:
    return subprocess.run(
        ["git", "show", f"HEAD:{path}"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout


def write(repo: Path, path: str, content: str | dict) -> None:
    target = repo / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(content if isinstance(content, str) else json.dumps(content, indent=2))


def read(repo: Path, path: str) -> dict:
    return json.loads((repo / path).read_text())


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """main: the demo's metrics and plots (the champion). Workspace on branch `pr`: the
    challenger, derived from them by computation."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    for path in FILES:
        write(repo, path, committed_demo(path))
    write(repo, "dvc.yaml", yaml.safe_dump(DVC_YAML))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "champion")
    git(repo, "switch", "-q", "-c", "pr")

    evaluate = read(repo, "metrics/evaluate.json")
    evaluate.update(roc_auc=round(evaluate["roc_auc"] + 0.0123, 6), brier=evaluate["brier"] + 0.004)
    write(repo, "metrics/evaluate.json", evaluate)
    roc = read(repo, "plots/roc.json")
    roc["roc"] = [{**p, "tpr": min(1.0, p["tpr"] * 1.1)} for p in roc["roc"]]
    write(repo, "plots/roc.json", roc)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["n_trials"] = params["train"]["n_trials"] + 3
    params["model"] = {**params["model"], "added_knob": 1}
    write(repo, "params.yaml", yaml.safe_dump(params))
    validation = read(repo, "metrics/validation.json")
    validation["rows_in"] += 1234
    validation["rows_quarantined"] += 34
    write(repo, "metrics/validation.json", validation)
    report = {
        "events": {
            "missing_days": ["2026-04-02"],
            "partitions": {
                "2026-04-01": {"fault": None, "top_checks": {"amount:in_range": 30, "x:y": 1}},
                "2026-04-03": {"fault": "truncated file", "top_checks": {}},
            },
        }
    }
    write(repo, "artifacts/validate/report.json", report)
    write(repo, "dvc.lock", yaml.safe_dump({"stages": {"train": {"outs": [
        {"path": "models/model.skops", "md5": "aaaa"}]}}}))  # fmt: skip
    write(repo, "metrics/gate.json", gate_report(blessed=False, model_md5="aaaa"))
    return repo


def gate_report(*, blessed: bool, model_md5: str) -> dict:
    return {
        "blessed": blessed,
        "checks": [
            {"name": "min_roc_auc", "passed": True, "challenger": 0.86, "champion": None,
             "threshold": 0.7, "detail": "roc_auc 0.86 >= 0.7", "difference": None,
             "ci_low": None, "ci_high": None, "confidence": None, "detectable": None,
             "baseline": None},
            {"name": "max_regression", "passed": blessed, "challenger": 0.86, "champion": 0.9,
             "threshold": 0.01, "detail": "roc_auc 0.86 vs champion 0.9", "difference": -0.04,
             "ci_low": -0.061, "ci_high": -0.019, "confidence": 0.95, "detectable": 0.0153,
             "baseline": None},
        ],
        "slices": [],
        "bootstrap": {"resamples": 1000, "confidence": 0.95, "seed": 7, "rows": 2400,
                      "resampled": "rows within each class", "key_metric": "roc_auc",
                      "detectable": "(z_{1-alpha/2} + z_{0.8}) x the bootstrap standard error "
                                    "of the difference"},
        "champion": {"ref": "main", "commit": "0123456789abcdef", "model_md5": "bbbb"},
        "champion_missing": None,
        "challenger": {"model_md5": model_md5},
    }  # fmt: skip


def table(report: str, header: str) -> dict[str, list[str]]:
    """The Markdown table whose header row starts with `| header |`: first cell -> cells."""
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {header} |"))
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def render(repo: Path, *args: str) -> tuple[int, str]:
    out = repo / "build/report.md"
    code = main(["--repo", str(repo), "--out", str(out), *args])
    return code, out.read_text() if out.exists() else ""


def test_metrics_are_compared_with_the_champion_on_base(repo: Path) -> None:
    code, report = render(repo, "--base", "main")
    assert code == 0
    champion = json.loads(git(repo, "show", "main:metrics/evaluate.json"))
    challenger = read(repo, "metrics/evaluate.json")
    rows = table(report, "metric")
    assert set(rows) == set(challenger)
    for name, (old, new, change) in rows.items():
        assert float(old) == champion[name] and float(new) == challenger[name], name
        number = float(re.match(r"[+-][\d.]+", change).group()) if change != "—" else None
        assert number == pytest.approx(challenger[name] - champion[name], abs=1e-6), name
    assert rows["roc_auc"][2].endswith("▲ better")
    assert rows["brier"][2].endswith("▼ worse")  # lower is better
    main_sha = git(repo, "rev-parse", "main").strip()
    assert f"`main` @ `{main_sha[:12]}`" in report


def test_params_gate_and_data_sections_come_from_the_files(repo: Path) -> None:
    _, report = render(repo, "--base", "main")
    base = yaml.safe_load(git(repo, "show", "main:params.yaml"))
    params = table(report, "param")
    assert params["`train.n_trials`"] == [
        f"`{base['train']['n_trials']}`",
        f"`{base['train']['n_trials'] + 3}`",
    ]
    assert params["`model.added_knob`"] == ["`(absent)`", "`1`"]
    assert len(params) == 2

    gate = read(repo, "metrics/gate.json")
    checks = table(report, "result")
    assert [cells[0] for cells in checks.values()] == [c["name"] for c in gate["checks"]]
    assert list(checks) == ["✅" if c["passed"] else "❌" for c in gate["checks"]]
    assert "**❌ not blessed** against `main` @ `0123456789ab`" in report
    # a comparison shows its difference, interval and detectable difference; a floor has none
    floor, regression = checks.values()
    assert floor[4:6] == ["—", "—"]
    assert regression[4:6] == ["-0.04 [-0.061, -0.019] 95%", "0.0153"]
    assert "Paired bootstrap: 1000 resamples of 2400 test rows, seed 7" in report

    old = json.loads(git(repo, "show", "main:metrics/validation.json"))
    new = read(repo, "metrics/validation.json")
    data = table(report, "data")
    for key in ("rows_in", "rows_quarantined"):
        assert data[key] == [str(old[key]), str(new[key]), f"{new[key] - old[key]:+d}"]
    assert "- events: failing checks `amount:in_range` ×30, `x:y` ×1" in report
    assert "- events: partition 2026-04-03: truncated file" in report
    assert "- events: missing days 2026-04-02" in report
    drift = read(repo, "metrics/data_drift.json")
    assert f"Drift: **{'drifted' if drift['drifted'] else 'no drift'}**" in report


def test_curves_of_both_models_are_drawn_as_text(repo: Path) -> None:
    _, report = render(repo, "--base", "main")
    for title in ("**ROC**", "**plots/pr.json**", "**Calibration**"):
        assert title in report
    assert "confusion" not in report
    roc = report.split("**ROC**")[1].split("```")[1]
    assert "* challenger" in roc and "o champion" in roc
    # the challenger's ROC was lifted: both marks appear on the grid
    grid = "".join(line.split("|", 1)[1] for line in roc.splitlines() if "|" in line)
    assert "*" in grid and "o" in grid
    # the PR curve is the same on both sides: every mark on it is shared
    pr = report.split("**plots/pr.json**")[1].split("```")[1]
    pr_grid = "".join(line.split("|", 1)[1] for line in pr.splitlines() if "|" in line)
    assert "@" in pr_grid and "*" not in pr_grid and "o" not in pr_grid


def test_without_a_champion_the_report_says_so(repo: Path) -> None:
    code, report = render(repo, "--base", "no-such-branch")
    assert code == 0
    assert "No champion: git ref `no-such-branch` not found (a first run)" in report
    rows = table(report, "metric")
    assert all(old == "—" and change == "—" for old, _, change in rows.values())
    assert "_No params.yaml on the base: nothing to compare._" in report
    assert "* challenger" in report and "   o champion" not in report


def test_missing_files_on_either_side_are_named(repo: Path) -> None:
    git(repo, "rm", "-q", "--cached", "plots/pr.json")
    git(repo, "commit", "-q", "-m", "base without the PR curve")
    git(repo, "branch", "-f", "base")
    (repo / "metrics/gate.json").unlink()
    (repo / "metrics/data_drift.json").unlink()
    code, report = render(repo, "--base", "base")
    assert code == 0
    assert "_metrics/gate.json not found: run `evergreen gate` first; no verdict._" in report
    assert "_metrics/data_drift.json not found: no drift report._" in report
    assert "**plots/pr.json** (no champion curve on the base)" in report


def test_a_verdict_about_another_model_is_flagged(repo: Path) -> None:
    write(repo, "metrics/gate.json", gate_report(blessed=True, model_md5="cccc"))
    _, report = render(repo, "--base", "main")
    assert "**✅ blessed**" in report
    assert "⚠️ the verdict is about model `cccc` but dvc.lock records `aaaa`" in report


def test_a_first_run_verdict_shows_the_baseline_and_an_old_one_still_renders(
    repo: Path,
) -> None:
    first = gate_report(blessed=True, model_md5="aaaa")
    first["champion"], first["champion_missing"] = None, "git ref 'main' not found"
    first["checks"] = [
        {"name": "baseline_roc_auc", "passed": True, "challenger": 0.657, "champion": None,
         "threshold": 0.0, "detail": "roc_auc 0.657 vs 0.5", "difference": 0.157,
         "ci_low": 0.13, "ci_high": 0.18, "confidence": 0.95, "detectable": 0.03,
         "baseline": 0.5},
    ]  # fmt: skip
    write(repo, "metrics/gate.json", first)
    _, report = render(repo, "--base", "main")
    assert "No champion (git ref 'main' not found): judged against a naive baseline" in report
    (row,) = table(report, "result").values()
    assert row[:6] == ["baseline_roc_auc", "0.657", "0.5 (baseline)", "0.0",
                       "+0.157 [+0.13, +0.18] 95%", "0.03"]  # fmt: skip
    # a gate.json written before the intervals: the new columns read —
    old = gate_report(blessed=True, model_md5="aaaa")
    old.pop("bootstrap")
    for check in old["checks"]:
        for key in ("difference", "ci_low", "ci_high", "confidence", "detectable", "baseline"):
            check.pop(key)
    write(repo, "metrics/gate.json", old)
    _, report = render(repo, "--base", "main")
    rows = [line.split("|")[2:-1] for line in report.splitlines() if line.startswith("| ✅ |")]
    assert [[c.strip() for c in row[4:6]] for row in rows] == [["—", "—"], ["—", "—"]]
    assert "Paired bootstrap" not in report


def test_missing_challenger_metrics_or_bad_json_exit_2_and_write_nothing(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (repo / "metrics/evaluate.json").unlink()
    code, report = render(repo, "--base", "main")
    assert code == 2 and report == ""
    assert (
        "metrics/evaluate.json: the challenger's test metrics are missing"
        in capsys.readouterr().err
    )

    write(repo, "metrics/evaluate.json", {"roc_auc": 0.8})
    write(repo, "metrics/gate.json", "{not json")
    code, report = render(repo, "--base", "main")
    assert code == 2 and report == ""
    assert "metrics/gate.json: not valid JSON" in capsys.readouterr().err


def test_the_project_declares_the_three_curves() -> None:
    plots = curve_plots(yaml.safe_load(committed_demo("dvc.yaml")))
    curves = [p.path for p in plots if not p.scatter]
    assert curves == ["plots/roc.json", "plots/pr.json", "plots/calibration.json"]
    # a regression's residual scatter, where the graph declares it (never the trials table)
    assert [p.path for p in plots if p.scatter] in ([], ["plots/residuals.json"])


def test_params_diff_and_chart_edges() -> None:
    assert params_diff({"a": {"b": 1, "c": [1, 2]}}, {"a": {"b": 1, "c": [1, 3]}}) == [
        ("a.c", [1, 2], [1, 3])
    ]
    chart = text_chart(None, [(0.0, 0.0), (1.0, 1.0)], "x", "y").splitlines()
    # the diagonal: bottom-left and top-right cells are marked
    assert chart[0].endswith("*") and chart[15].split("|")[1].startswith("*")
    assert "champion" not in chart[-1]


def test_a_regression_pr_report_has_regression_metrics_and_the_residual_scatter(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "reg"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    dvc_yaml = {
        "stages": {
            "evaluate": {
                "cmd": "true",
                "plots": [
                    {"plots/roc.json": {"template": "simple", "x": "fpr", "y": "tpr"}},
                    {"plots/residuals.json": {"template": "scatter", "x": "predicted",
                                              "y": "residual", "title": "Residuals"}},
                    {"metrics/trials.csv": {"template": "scatter", "x": "trial", "y": "score"}},
                ],
            }
        }
    }  # fmt: skip
    write(repo, "dvc.yaml", yaml.safe_dump(dvc_yaml))
    # the kind's other plot is written empty: it is left out, not drawn or named missing
    write(repo, "plots/roc.json", {"roc": []})
    points = [{"predicted": p, "actual": p + r, "residual": r} for p, r in ((10, -5), (50, 8))]
    write(repo, "plots/residuals.json", {"residuals": points})
    write(repo, "metrics/evaluate.json", {"mae": 12.0, "rmse": 17.0, "r2": 0.9, "n": 168})
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "champion")
    write(repo, "metrics/evaluate.json", {"mae": 10.5, "rmse": 18.0, "r2": 0.92, "n": 168})
    out = tmp_path / "report.md"
    assert main(["--repo", str(repo), "--base", "main", "--out", str(out)]) == 0
    text = out.read_text()
    assert "| mae | 12.0 | 10.5 | -1.500000 ▲ better |" in text
    assert "| rmse | 17.0 | 18.0 | +1.000000 ▼ worse |" in text
    assert "| r2 | 0.9 | 0.92 | +0.020000 ▲ better |" in text
    assert "roc_auc" not in text and "plots/roc.json" not in text and "trials" not in text
    chart = text.split("**Residuals**", 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    # two points, not a line between them (the same on both sides: @)
    grid = chart.splitlines()[:16]
    assert sum(row.count("@") for row in grid) == 2, chart


def test_a_base_of_another_dataset_is_no_comparable_champion(repo: Path) -> None:
    # a project started for a new dataset from a clone of the shop's: main still holds the shop
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["dataset"] = {**params["dataset"], "name": "bank"}
    write(repo, "params.yaml", yaml.safe_dump(params))
    verdict = gate_report(blessed=True, model_md5="aaaa")
    verdict["champion"], verdict["dataset"] = None, "bank"
    verdict["champion_not_comparable"] = (
        "champion 'main' (0123456789ab) is a model of dataset 'shop'"
    )
    verdict["checks"] = verdict["checks"][:1]
    write(repo, "metrics/gate.json", verdict)

    code, report = render(repo, "--base", "main")
    assert code == 0
    assert "No comparable champion: `main` @ " in report and "holds dataset `shop`" in report
    assert "this branch's is `bank`. Challenger only." in report
    rows = table(report, "metric")
    assert all(old == "—" and change == "—" for old, _, change in rows.values())
    assert "No comparable champion (champion 'main' (0123456789ab) is a model of dataset" in report
    assert "⚠️" not in report

    # a verdict left over from the shop (before `evergreen new`) is flagged
    verdict["dataset"] = "shop"
    write(repo, "metrics/gate.json", verdict)
    _, report = render(repo, "--base", "main")
    assert "⚠️ the verdict is about dataset `shop`, this workspace's is `bank`" in report


def test_the_headline_metrics_compare_and_the_tables_come_from_the_report_data(
    repo: Path,
) -> None:
    """The metrics files hold scalars (issue 16); each table the report shows is read from the
    report data beside them: the gate's reports/gate.json, the drift stage's report, the
    validate stage's per-table totals."""
    detail = gate_report(blessed=False, model_md5="aaaa")
    write(repo, "reports/gate.json", detail)
    write(repo, "metrics/gate.json", {
        "blessed": False, "checks": {"min_roc_auc": True, "max_regression": False},
        "champion": {"ref": "main", "commit": "0123456789abcdef"}, "champion_missing": None,
        "challenger": {"model_md5": "aaaa"}})  # fmt: skip
    write(repo, "metrics/data_drift.json", {"drifted": True, "reference_until": "2026-04-16",
          "tables_drifted": 1, "columns_drifted": 1, "psi_max": 0.64, "js_max": 0.1})  # fmt: skip
    write(repo, "artifacts/drift/report.json", {"drifted": True, "tables": {"customers": {
        "drifted": True, "rows": {}, "columns": {"monthly_price": {
            "drifted": True, "metric": "psi", "value": 0.64, "threshold": 0.2, "role": "input"},
            "notes": {"drifted": True, "metric": "js_distance", "value": 0.4, "threshold": 0.1,
                      "role": "identifier"}}}}})  # fmt: skip
    validate = read(repo, "artifacts/validate/report.json")
    validate["events"]["totals"] = {"rows_in": 91, "rows_valid": 90, "rows_quarantined": 1}
    write(repo, "artifacts/validate/report.json", validate)
    _, report = render(repo, "--base", "main")

    checks = table(report, "result")
    assert [cells[0] for cells in checks.values()] == ["min_roc_auc", "max_regression"]
    assert list(checks.values())[1][4:6] == ["-0.04 [-0.061, -0.019] 95%", "0.0153"]
    assert "Paired bootstrap: 1000 resamples of 2400 test rows, seed 7" in report
    assert "**❌ not blessed** against `main` @ `0123456789ab`" in report
    data = table(report, "data")
    assert data["events.rows_in"] == ["—", "91", "—"]  # the report is the workspace's only
    assert "rows_in" in data and "Drift: **drifted**" in report
    # free text moved too: named apart, not counted among the inputs
    assert (
        "customers: 1 of 1 input column(s) drifted: `monthly_price` psi 0.64 > 0.2; moved, not "
        "counted: `notes` (identifier)" in report
    )

    # a report of another model than the verdict's: its numbers are not shown as this one's
    write(repo, "reports/gate.json", gate_report(blessed=True, model_md5="other"))
    (repo / "artifacts/drift/report.json").unlink()
    _, report = render(repo, "--base", "main")
    checks = table(report, "result")
    assert list(checks) == ["✅", "❌"] and list(checks.values())[1][4] == "—"
    assert "Paired bootstrap" not in report
    assert "artifacts/drift/report.json is not in the workspace (`dvc pull` restores it)" in report
