"""Training-serving skew: the inputs the server was sent (its prediction log) against the
training data's, per input, in the monitor's terms.

Each input is compared as the monitor compares a lake column with its reference window
(`stages/lib/drift.py`): PSI over bins at the training data's quantiles (numbers) or the
Jensen-Shannon distance of value frequencies (categories), with a chi-square test of
homogeneity; an input is skewed when the effect size passes its threshold AND the test is
significant at `confidence`, Bonferroni-corrected over the inputs compared, with at least
`min_count` values on both sides. The training data is summarised per snapshot date and the
served inputs per day, as the profiles summarise partitions, so the test counts rows of one
day (one customer seen at six snapshots) for what they are worth (`Comparison.design_effect`).

Beside the distributions, what the model never saw: a served number outside the card's
training range (`min`, `max`) and a category the training data never held (the card's
`observed` values, else its `allowed` ones), each with its count and share: a client that
keeps sending them is not served by what the model learnt.

Skew is reported, not a reason to retrain: a served input that differs from the data the
features stage computes is a mismatch between the client and the pipeline (a unit, a
default, a stale cache), which retraining on the same pipeline would not fix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from stages.lib.drift import compare_categorical, compare_numeric, sample_stats

DIGITS = 6
TOP_UNSEEN = 5  # unseen categories listed by value, the most frequent first


def numeric_stats(values: pd.Series | np.ndarray) -> dict[str, Any]:
    """One sample of a number summarised as a profile summarises a partition's column."""
    x = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype="float64")
    stats = sample_stats(x)
    present = x[~np.isnan(x)]
    return {
        "type": "float64",
        **stats,
        "std": float(present.std(ddof=1)) if len(present) > 1 else None,
    }


def as_text(values: pd.Series) -> pd.Series:
    """Categories as the log writes them (text), nulls kept: an integer code stored as a float
    (a column with nulls) reads "2", not "2.0"."""
    s = pd.Series(values)
    if pd.api.types.is_float_dtype(s) and s.dropna().eq(s.dropna().round()).all():
        s = s.astype("Int64")
    return s.astype("string").astype(object).where(s.notna(), None)


def categorical_stats(values: pd.Series) -> dict[str, Any]:
    """One sample of a category summarised as a profile does: every value's count (no
    `other`: a sample's values are all kept) and the nulls."""
    text = as_text(values)
    present = text.dropna()
    return {
        "type": "string",
        "count": len(present),
        "nulls": int(len(text) - len(present)),
        "distinct": int(present.nunique()),
        "top": {str(k): int(v) for k, v in present.value_counts(sort=False).items()},
        "other": 0,
    }


def _by_group(values: pd.Series, groups: pd.Series | None, numeric: bool) -> list[dict[str, Any]]:
    """A column's stats per group (a snapshot date, a day of requests), or as one sample."""
    summarise = numeric_stats if numeric else categorical_stats
    if groups is None:
        return [summarise(values)]
    return [summarise(part) for _, part in values.groupby(groups.to_numpy(), sort=True)]


def outside_numeric(values: pd.Series, spec: Mapping[str, Any]) -> dict[str, Any] | None:
    """Served values below the card's training minimum or above its maximum."""
    lo, hi = spec.get("min"), spec.get("max")
    if lo is None and hi is None:
        return None
    x = pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64")
    below = int(np.sum(x < lo)) if lo is not None else 0
    above = int(np.sum(x > hi)) if hi is not None else 0
    present = x[~np.isnan(x)]
    return {
        "kind": "out_of_range",
        "count": below + above,
        "below": below,
        "above": above,
        "share": round((below + above) / len(x), DIGITS) if len(x) else 0.0,
        "training_min": lo,
        "training_max": hi,
        "served_min": float(present.min()) if len(present) else None,
        "served_max": float(present.max()) if len(present) else None,
    }


def outside_categorical(values: pd.Series, spec: Mapping[str, Any]) -> dict[str, Any] | None:
    """Served categories the training data never held (the card's `observed`, else
    `allowed`), with the most frequent ones by value."""
    known = spec.get("observed") or spec.get("allowed")
    if not known:
        return None
    text = as_text(values).dropna()
    unseen = text[~text.isin({str(v) for v in known})]
    counts = unseen.value_counts()
    return {
        "kind": "unseen_category",
        "count": len(unseen),
        "share": round(len(unseen) / len(values), DIGITS) if len(values) else 0.0,
        "values": {str(k): int(v) for k, v in counts.head(TOP_UNSEEN).items()},
        "distinct": len(counts),
    }


def serving_skew(
    train: pd.DataFrame,
    served: pd.DataFrame,
    card_features: Mapping[str, Any],
    *,
    bins: int,
    psi_threshold: float | None,
    js_threshold: float | None,
    confidence: float,
    min_count: int,
    train_groups: pd.Series | None = None,
    served_groups: pd.Series | None = None,
) -> dict[str, Any]:
    """Per input of the card (`features`: numeric and categorical, each with its name and
    training range or values): the served values (`served`, one column per input) against
    the training data's (`train`), and the served values the model never saw. `*_groups`
    give each row's day (a snapshot date, a request's date) for the design effect."""
    specs: list[tuple[str, bool, Mapping[str, Any]]] = [
        (f["name"], kind == "numeric", f)
        for kind in ("numeric", "categorical")
        for f in card_features.get(kind) or ()
        if isinstance(f, Mapping) and "name" in f
    ]
    inputs: dict[str, dict[str, Any]] = {}
    missing: list[str] = []
    compared = []
    for name, numeric, spec in specs:
        if name not in train or name not in served:
            missing.append(name)
            continue
        ref = _by_group(train[name], train_groups, numeric)
        cur = _by_group(served[name], served_groups, numeric)
        measure = compare_numeric(ref, cur, bins) if numeric else compare_categorical(ref, cur)
        outside = (outside_numeric if numeric else outside_categorical)(served[name], spec)
        threshold = psi_threshold if numeric else js_threshold
        inputs[name] = {
            **measure.to_json(),
            "threshold": threshold,
            "outside_training": outside,
        }
        compared.append((name, measure, threshold))
    alpha = (1 - confidence) / max(len(compared), 1)
    for name, measure, threshold in compared:
        enough = min(measure.n_reference, measure.n_current) >= min_count
        inputs[name]["skewed"] = bool(
            threshold is not None
            and enough
            and measure.value > threshold
            and measure.p_value < alpha
        )
        inputs[name]["enough_data"] = bool(enough)
    outside = sorted(
        (
            {"input": name, **c["outside_training"]}
            for name, c in inputs.items()
            if c["outside_training"] and c["outside_training"]["count"]
        ),
        key=lambda o: -o["count"],
    )
    return {
        "status": "compared",
        "n_training": len(train),
        "n_served": len(served),
        "alpha": float(f"{alpha:.3g}"),
        "skewed": sorted(name for name, c in inputs.items() if c["skewed"]),
        "outside_training": outside,
        "inputs": inputs,
        "missing": missing,
    }


def summary_lines(skew: Mapping[str, Any]) -> list[str]:
    """The skew in a few readable lines (the shadow command's and the report's)."""
    if skew.get("status") != "compared":
        return [f"serving skew: {skew.get('detail', skew.get('status'))}"]
    lines = [
        f"serving skew: {len(skew['skewed'])} of {len(skew['inputs'])} inputs differ from the "
        f"training data ({skew['n_served']} served rows vs {skew['n_training']} training rows)"
    ]
    for name in skew["skewed"]:
        c = skew["inputs"][name]
        lines.append(
            f"  {name}: {c['statistic']}={c['value']} (threshold {c['threshold']}, "
            f"p={c['p_value']} < {skew['alpha']})"
        )
    for o in skew["outside_training"]:
        if o["kind"] == "out_of_range":
            lines.append(
                f"  {o['input']}: {o['count']} served values outside the training range "
                f"[{o['training_min']}, {o['training_max']}] ({o['below']} below, "
                f"{o['above']} above; share {o['share']})"
            )
        else:
            shown = ", ".join(f"{v!r} x{n}" for v, n in o["values"].items())
            lines.append(
                f"  {o['input']}: {o['count']} served values of categories never seen in "
                f"training ({shown}; share {o['share']})"
            )
    return lines


def inputs_of(card_features: Mapping[str, Any] | None) -> Sequence[str]:
    """The card's input names, numbers first."""
    return [
        f["name"]
        for kind in ("numeric", "categorical")
        for f in (card_features or {}).get(kind) or ()
        if isinstance(f, Mapping) and "name" in f
    ]
