"""Marketing-call outcomes of a bank (`conf/dataset/bank.yaml`), in the shape of the public
"Bank Marketing" data, generated: one row per call, on weekdays only, target `y` (yes/no).

The economy moves year by year (euribor, employment variation, consumer confidence) and so does
what makes a client subscribe: in the first year rates are high and few say yes, whatever the
month; later, rates are low, the base rate is three times higher, mobile contact matters more
and the spring/autumn months work best. A model trained on the first year degrades on the
next: strong drift between years, the reason to retrain.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa

from stages.sim.samples import Sample

JOBS = ("admin", "blue-collar", "technician", "services", "management", "retired", "student",
        "unemployed")  # fmt: skip
JOB_WEIGHTS = (0.25, 0.22, 0.16, 0.1, 0.08, 0.07, 0.06, 0.06)
JOB_EFFECT = (0.0, -0.8, 0.0, -0.5, 0.3, 1.5, 1.6, 0.4)
MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
# per regime (year index, capped): intercept, euribor slope, cellular effect, good months
REGIMES = (
    {"base": -2.6, "euribor": -0.15, "cellular": 0.3, "good": ("dec",), "euribor_level": 4.8},
    {"base": -2.8, "euribor": -0.9, "cellular": 1.6, "good": ("mar", "sep", "oct"),
     "euribor_level": 1.2},
    {"base": -2.5, "euribor": -1.2, "cellular": 1.8, "good": ("mar", "apr", "sep", "oct"),
     "euribor_level": 0.7},
)  # fmt: skip
CALLS_PER_DAY = 14  # on average; a day has 1 to MAX_CALLS (quiet days, campaign bursts)
MAX_CALLS = 60
SCHEMA = pa.schema(
    [
        ("call_time", pa.timestamp("us")),
        ("age", pa.int64()),
        ("job", pa.string()),
        ("marital", pa.string()),
        ("education", pa.string()),
        ("contact", pa.string()),
        ("month", pa.string()),
        ("campaign", pa.int64()),
        ("previous", pa.int64()),
        ("poutcome", pa.string()),
        ("euribor3m", pa.float64()),
        ("emp_var_rate", pa.float64()),
        ("cons_conf_idx", pa.float64()),
        ("y", pa.string()),
    ]
)


def day(date: dt.date, index: int, seed: int) -> pd.DataFrame | None:
    if date.weekday() >= 5:
        return None
    rng = np.random.default_rng([seed, index])
    regime = REGIMES[min(index // 365, len(REGIMES) - 1)]
    # gamma-Poisson: most days a handful of calls, some a burst of dozens
    n = int(np.clip(rng.poisson(rng.gamma(0.8, CALLS_PER_DAY / 0.8)), 1, MAX_CALLS))
    # within a year the economy holds (small daily moves); at the year's turn it jumps
    year = min(index // 365, len(REGIMES) - 1)
    level = regime["euribor_level"] + 0.05 * np.sin(index / 40)
    euribor = np.round(level + rng.normal(0, 0.08, n), 3).clip(-0.9, 5.9)
    emp = np.round(np.full(n, 1.4 - 1.2 * year) + rng.normal(0, 0.1, n), 1)
    conf = np.round(-36 + 6 * (year - 1) + rng.normal(0, 1.5, n), 1).clip(-59, -1)
    job = rng.choice(len(JOBS), n, p=JOB_WEIGHTS)
    age = np.where(np.isin(job, (5,)), rng.integers(58, 90, n), rng.integers(18, 60, n))
    cellular = rng.random(n) < (0.55 + 0.1 * min(index // 365, 2))
    previous = rng.poisson(0.4, n).clip(0, 10)
    success = (previous > 0) & (rng.random(n) < 0.35)
    campaign = (1 + rng.geometric(0.45, n) - 1).clip(1, 60)
    month = MONTHS[date.month - 1]
    logit = (
        regime["base"]
        + regime["euribor"] * (euribor - regime["euribor_level"])
        + regime["cellular"] * cellular
        + 0.9 * (month in regime["good"])
        + np.take(JOB_EFFECT, job)
        + 2.4 * success
        + 0.8 * (age < 25)
        - 0.3 * (campaign - 1)
        + 0.02 * (conf + 36)
    )
    y = rng.random(n) < 1 / (1 + np.exp(-logit))
    education = rng.choice(np.array(["basic", "high_school", "university", None], dtype=object), n,
                           p=[0.3, 0.35, 0.3, 0.05])  # fmt: skip
    seconds = np.sort(rng.integers(9 * 3600, 18 * 3600, n))
    return pd.DataFrame(
        {
            "call_time": pd.Timestamp(date) + pd.to_timedelta(seconds, unit="s"),
            "age": age.astype("int64"),
            "job": np.take(JOBS, job),
            "marital": rng.choice(["married", "single", "divorced"], n, p=[0.6, 0.28, 0.12]),
            "education": education,
            "contact": np.where(cellular, "cellular", "telephone"),
            "month": month,
            "campaign": campaign.astype("int64"),
            "previous": previous.astype("int64"),
            "poutcome": np.where(
                previous == 0, "nonexistent", np.where(success, "success", "failure")
            ),
            "euribor3m": euribor,
            "emp_var_rate": emp.clip(-3.9, 1.9),
            "cons_conf_idx": conf,
            "y": np.where(y, "yes", "no"),
        }
    )


SAMPLE = Sample(table="calls", start=dt.date(2024, 1, 1), days=730, day=day, schema=SCHEMA)
