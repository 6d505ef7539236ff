"""The shadow model's live record, read from the server's prediction log.

    evergreen shadow [--out shadow.json]          (stages/cli/shadow.py)

The server scores every request with the champion and, when one is configured, a shadow model
(logged, never returned: `stages/contract/prediction_log.py`). On the requests both scored,
for the latest champion/shadow pair of versions in the log:

- agreement: the share of requests on which both make the same decision at the decision
  threshold (`evaluate.threshold`: `predictions.decision_threshold`), and the two ways they
  disagree; a regression has no decision, so the mean absolute difference of the predictions;
- score PSI: the shadow's scores against the champion's (the drift code's bins and test);
- once labels mature (the request's day as the snapshot date, labels from prepare's history
  with the features stage's label code; a rows task's targets by key): both models' realised
  metrics on the SAME requests (ROC AUC and PR AUC, or MAE and RMSE) and the paired bootstrap
  interval of the difference (`stages/lib/bootstrap.py`, seeded, a classification resampled
  within each class), oriented so that a positive difference means the shadow is better.

The verdict reads the primary metric's interval (ROC AUC; a regression's MAE):

- `shadow better`: the whole interval is above 0;
- `shadow worse`: the whole interval is below 0;
- `not distinguishable`: it holds 0 (the record gives the difference it could have detected);
- `not enough labelled requests`: fewer than `min_labelled` requests have a label (or one
  class only); the record says how many more are needed.

An entity requested several times on one day counts once (its latest request): the bootstrap
draws independent rows, and a client retrying would otherwise weigh twice.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from stages.contract.prediction_log import log_files
from stages.lib.bootstrap import METRICS, paired_bootstrap
from stages.lib.drift import compare_values
from stages.lib.skew import serving_skew

DIGITS = 6
FEATURES = "features."  # a logged input's column: features.<name>
DATE = "request_date"
BETTER, SAME, WORSE, TOO_FEW = (
    "shadow better",
    "not distinguishable",
    "shadow worse",
    "not enough labelled requests",
)


@dataclass(frozen=True)
class ShadowConfig:
    """How the record judges: the decision threshold, the score bins, and the paired
    bootstrap's settings (the gate's confidence and resamples, the project's seed)."""

    threshold: float = 0.5
    bins: int = 10
    min_labelled: int = 200
    confidence: float = 0.95
    resamples: int = 1000
    seed: int = 0


# --- the log as a frame -----------------------------------------------------------------------


def read_log(
    path: str | None, days: int, *, authenticated_only: bool = True
) -> tuple[pd.DataFrame | None, dict[str, Any]]:
    """Every logged row of the latest `days` days (parquet or JSON lines, local folder or
    s3://), inputs as `features.<name>` columns; None with the reason when there is none. With
    `authenticated_only`, only the requests that carried the API key (as the monitor reads
    them: anyone can send the others)."""
    found, info = log_files(path, days)
    if found is None:
        return None, info
    fs, files = found
    frames = [_read_file(fs, f) for f in files]
    log = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if "authenticated" not in log:  # files written before the column existed
        log["authenticated"] = False
    log["authenticated"] = log["authenticated"].fillna(False).astype(bool)
    info = {**info, "rows": len(log), "authenticated_rows": int(log["authenticated"].sum())}
    if authenticated_only:
        log = log[log["authenticated"]].reset_index(drop=True)
        if log.empty:
            return None, {**info, "status": "unauthenticated", "detail": (
                "no request carried the API key: unauthenticated traffic is not judged "
                "(anyone could have sent it)")}  # fmt: skip
    if "time" not in log:
        return None, {**info, "status": "unreadable", "detail": "log rows lack 'time'"}
    log[DATE] = pd.to_datetime(log["time"], utc=True).dt.date
    return log, info


def _read_file(fs: pafs.FileSystem, file: str) -> pd.DataFrame:
    if file.endswith(".parquet"):
        table = pq.read_table(file, filesystem=fs, use_threads=False)
    else:
        with fs.open_input_stream(file) as f:
            rows = [json.loads(line) for line in f.read().splitlines() if line.strip()]
        table = pa.Table.from_pylist(rows)
    # features.<name>: the struct's fields as columns (JSON lines give the same names)
    return table.flatten().to_pandas()


def served_inputs(log: pd.DataFrame) -> pd.DataFrame:
    """The logged inputs, one column per input, by its name."""
    cols = [c for c in log.columns if c.startswith(FEATURES)]
    return log[cols].rename(columns=lambda c: c.removeprefix(FEATURES))


# --- the record -------------------------------------------------------------------------------


def shadowed(log: pd.DataFrame, output: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The rows both models scored, of the champion/shadow pair of the latest such request
    (a comparison across a model change would mix two champions)."""
    shadow_col = f"shadow_{output}"
    if shadow_col not in log or output not in log:
        return log.iloc[0:0], {"model_version": None, "shadow_model_version": None}
    both = log[np.isfinite(pd.to_numeric(log[shadow_col], errors="coerce").astype("float64"))]
    both = both[np.isfinite(pd.to_numeric(both[output], errors="coerce").astype("float64"))]
    if both.empty:
        return both, {"model_version": None, "shadow_model_version": None}
    latest = both.sort_values("time", kind="stable").iloc[-1]
    pair = {
        "model_version": latest.get("model_version"),
        "shadow_model_version": latest.get("shadow_model_version"),
    }
    keep = np.ones(len(both), dtype=bool)
    for col, version in pair.items():
        if col in both:
            keep &= both[col].astype(object).eq(version).to_numpy()
    return both[keep].reset_index(drop=True), pair


def agreement(champion: np.ndarray, shadow: np.ndarray, threshold: float) -> dict[str, Any]:
    """The two models' decisions at `threshold` (a score at or above it is positive)."""
    a, b = champion >= threshold, shadow >= threshold
    n = len(a)
    return {
        "threshold": threshold,
        "n": n,
        "agreement": round(float(np.mean(a == b)), DIGITS) if n else None,
        "champion_only_positive": int(np.sum(a & ~b)),
        "shadow_only_positive": int(np.sum(~a & b)),
        "champion_positive_rate": round(float(a.mean()), DIGITS) if n else None,
        "shadow_positive_rate": round(float(b.mean()), DIGITS) if n else None,
    }


def closeness(champion: np.ndarray, shadow: np.ndarray) -> dict[str, Any]:
    """A regression's agreement: how far apart the two predictions are."""
    diff = np.abs(shadow - champion)
    both_vary = len(champion) > 1 and champion.std() > 0 and shadow.std() > 0
    return {
        "n": len(diff),
        "mean_absolute_difference": round(float(diff.mean()), DIGITS) if len(diff) else None,
        "correlation": round(float(np.corrcoef(champion, shadow)[0, 1]), DIGITS)
        if both_vary
        else None,
    }


# the metrics compared (stages/lib/bootstrap.py's METRICS), the primary one first
CLASSIFICATION_METRICS = ("roc_auc", "pr_auc")
REGRESSION_METRICS = ("mae", "rmse")


def compare_on_labels(
    y: np.ndarray,
    champion: np.ndarray,
    shadow: np.ndarray,
    *,
    regression: bool,
    cfg: ShadowConfig,
) -> dict[str, Any]:
    """Both models' metrics on the same labelled requests, the paired interval of the shadow's
    improvement (positive: the shadow is better), and the verdict on the primary metric."""
    n = len(y)
    positives = None if regression else int(np.sum(y == 1))
    one_class = not regression and (positives == 0 or positives == n)
    if n < cfg.min_labelled or one_class:
        needed = max(cfg.min_labelled - n, 0)
        why = (
            f"{n} labelled requests, {cfg.min_labelled} needed ({needed} more)"
            if n < cfg.min_labelled
            else f"{n} labelled requests of one class only: ROC AUC needs both"
        )
        return {"verdict": TOO_FEW, "n": n, "positives": positives, "needed": needed,
                "min_labelled": cfg.min_labelled, "detail": why, "metrics": {}}  # fmt: skip
    metrics = {}
    chosen = REGRESSION_METRICS if regression else CLASSIFICATION_METRICS
    for name in chosen:
        higher = METRICS[name].higher_is_better
        a, b = (shadow, champion) if higher else (champion, shadow)
        found = paired_bootstrap(
            y,
            a,
            b,
            METRICS[name].fn,
            resamples=cfg.resamples,
            seed=cfg.seed,
            confidence=cfg.confidence,
            strata=None if regression else y,
        )
        shadow_value, champion_value = found.values if higher else found.values[::-1]
        metrics[name] = {
            "champion": round(champion_value, DIGITS),
            "shadow": round(shadow_value, DIGITS),
            "improvement": round(found.estimate, DIGITS),
            "ci_low": round(found.low, DIGITS),
            "ci_high": round(found.high, DIGITS),
            "detectable": round(found.detectable, DIGITS),
            "higher_is_better": higher,
        }
    primary = next(iter(metrics))
    m = metrics[primary]
    verdict = BETTER if m["ci_low"] > 0 else WORSE if m["ci_high"] < 0 else SAME
    return {
        "verdict": verdict,
        "metric": primary,
        "n": n,
        "positives": positives,
        "confidence": cfg.confidence,
        "resamples": cfg.resamples,
        "seed": cfg.seed,
        "metrics": metrics,
    }


def shadow_record(
    log: pd.DataFrame | None,
    labels: pd.DataFrame | None,
    *,
    key: str,
    regression: bool,
    cfg: ShadowConfig,
    log_info: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The shadow's record from the log's rows (`read_log`) and the labels known now
    (`labels`: key as text, `request_date`, `label`; None or empty: none matured yet)."""
    output = "prediction" if regression else "score"
    base: dict[str, Any] = {"log": dict(log_info or {})}
    if log is None:
        return {**base, "status": "no_log", "verdict": None,
                "detail": (log_info or {}).get("detail", "no prediction log")}  # fmt: skip
    rows, pair = shadowed(log, output)
    if rows.empty:
        return {**base, "status": "no_shadow", "verdict": None,
                "detail": "no logged request was scored by a shadow model"}  # fmt: skip
    champion = rows[output].to_numpy(dtype="float64")
    shadow = rows[f"shadow_{output}"].to_numpy(dtype="float64")
    shift = compare_values(champion, shadow, cfg.bins)
    record: dict[str, Any] = {
        **base,
        "status": "compared",
        **pair,
        "requests": int(rows["request_id"].nunique()) if "request_id" in rows else len(rows),
        "rows": len(rows),
        "first": str(min(rows[DATE])),
        "last": str(max(rows[DATE])),
        "agreement": closeness(champion, shadow)
        if regression
        else agreement(champion, shadow, cfg.threshold),
        "score_psi": {**shift.to_json(), "of": f"shadow_{output} vs {output}"},
    }
    joined = _labelled(rows, labels, key)
    y = joined["label"].to_numpy(dtype="float64")
    realised = compare_on_labels(
        y,
        joined[output].to_numpy(dtype="float64"),
        joined[f"shadow_{output}"].to_numpy(dtype="float64"),
        regression=regression,
        cfg=cfg,
    )
    record["realised"] = realised
    record["verdict"] = realised["verdict"]
    return record


def _labelled(rows: pd.DataFrame, labels: pd.DataFrame | None, key: str) -> pd.DataFrame:
    """The rows with a label, one per key and day (the latest request)."""
    if labels is None or labels.empty or key not in rows:
        return rows.iloc[0:0].assign(label=pd.Series(dtype="float64"))
    left = rows.assign(**{key: rows[key].astype(str)})
    left = left.sort_values("time", kind="stable").drop_duplicates([key, DATE], keep="last")
    right = labels.assign(**{key: labels[key].astype(str)})
    on = [key, DATE] if DATE in right else [key]
    return left.merge(right[[*on, "label"]].drop_duplicates(on), on=on, how="inner")


def summary_lines(record: Mapping[str, Any]) -> list[str]:
    """The record in a few readable lines."""
    if record.get("status") != "compared":
        return [f"shadow: {record.get('detail', record.get('status'))}"]
    a = record["agreement"]
    lines = [
        f"shadow {record['shadow_model_version']} beside champion {record['model_version']}: "
        f"{record['rows']} rows of {record['requests']} requests, "
        f"{record['first']} .. {record['last']}"
    ]
    if "agreement" in a:
        lines.append(
            f"  decisions agree on {a['agreement']:.1%} at threshold {a['threshold']} "
            f"(champion only positive {a['champion_only_positive']}, shadow only "
            f"{a['shadow_only_positive']})"
        )
    else:
        lines.append(f"  mean absolute difference {a['mean_absolute_difference']}")
    psi = record["score_psi"]
    lines.append(f"  score PSI shadow vs champion {psi['value']} (p={psi['p_value']})")
    r = record["realised"]
    if r["verdict"] == TOO_FEW:
        lines.append(f"  verdict: {TOO_FEW}: {r['detail']}")
        return lines
    for name, m in r["metrics"].items():
        lines.append(
            f"  {name}: champion {m['champion']}, shadow {m['shadow']}, shadow's improvement "
            f"{m['improvement']:+} [{m['ci_low']:+}, {m['ci_high']:+}] at {r['confidence']:.0%}"
        )
    lines.append(f"  verdict: {r['verdict']} (on {r['n']} labelled requests, {r['metric']})")
    return lines


def live_sections(
    log: pd.DataFrame | None,
    log_info: Mapping[str, Any],
    labels: pd.DataFrame | None,
    train: pd.DataFrame | None,
    card_features: Mapping[str, Any],
    *,
    key: str,
    regression: bool,
    cfg: ShadowConfig,
    skew: Mapping[str, Any],
    train_groups: pd.Series | None = None,
) -> dict[str, Any]:
    """The monitor's and `evergreen shadow`'s sections: the shadow's record and the serving
    skew (`skew`: `serving_skew`'s thresholds) of the logged inputs against `train`."""
    record = shadow_record(log, labels, key=key, regression=regression, cfg=cfg, log_info=log_info)
    if log is None:
        found = {"status": "no_log", "detail": log_info.get("detail", "no prediction log")}
    elif train is None or train.empty:
        found = {"status": "no_training_data", "detail": "no training data to compare with"}
    else:
        found = serving_skew(
            train,
            served_inputs(log),
            card_features,
            train_groups=train_groups,
            served_groups=log[DATE],
            **skew,
        )
    return {"shadow": record, "serving_skew": found}


def headline(sections: Mapping[str, Any]) -> dict[str, Any]:
    """The few scalars worth comparing across runs: the shadow's decision agreement and
    improvement of its primary metric (None until judged), and how many inputs are skewed."""
    record, skew = sections.get("shadow") or {}, sections.get("serving_skew") or {}
    agreement = (record.get("agreement") or {}).get("agreement")
    realised = record.get("realised") or {}
    primary = (realised.get("metrics") or {}).get(realised.get("metric"), {})
    return {
        "shadow_agreement": agreement,
        "shadow_improvement": primary.get("improvement"),
        "skewed_inputs": len(skew["skewed"]) if skew.get("status") == "compared" else None,
    }
