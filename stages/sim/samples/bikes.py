"""Hourly bike-rental counts (`conf/dataset/bikes.yaml`), in the shape of the public "Bike
Sharing" data, generated: one row per hour, target `cnt`.

Rentals follow the hour (commuter peaks on working days, a midday hump on days off), the season
and temperature (a comfortable 20-25 °C is best), the weather (rain empties the streets) and
holidays (which behave like weekends); the counts are Poisson around that expectation. Like the
public data, `casual` and `registered` riders add up to `cnt`: columns that are the target's
parts, never the model's inputs.

From day REGIME_DAY on, a new metro line takes a share of the working-day commute: the
registered riders' peaks fall, while the weather, the calendar and every other input stay as
they were (concept drift without covariate drift: only the errors show it).
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa

from stages.sim.samples import Sample

HOLIDAYS = ("01-01", "05-01", "07-04", "11-11", "12-25", "12-26")
SEASONS = ("winter", "spring", "summer", "fall")
# coded 1-4 like the public data (1 clear, 2 mist, 3 light rain, 4 heavy rain): an
# integer-coded category, where `season` stays text
WEATHER = (1, 2, 3, 4)
WEATHER_FACTOR = (1.0, 0.85, 0.45, 0.15)
REGIME_DAY = 120  # day index from which the commute peaks lose COMMUTE_LOSS of their riders
COMMUTE_LOSS = 0.55
SCHEMA = pa.schema(
    [
        ("hour_start", pa.timestamp("us")),
        ("season", pa.string()),
        ("holiday", pa.int64()),
        ("workingday", pa.int64()),
        ("weekday", pa.int64()),
        ("hour", pa.int64()),
        ("weather", pa.int64()),
        ("temp", pa.float64()),
        ("humidity", pa.float64()),
        ("windspeed", pa.float64()),
        ("casual", pa.int64()),
        ("registered", pa.int64()),
        ("cnt", pa.int64()),
    ]
)


def _hourly_profile(working: bool, commute: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(casual, registered) riders' shares by hour: commuters are registered riders."""
    hours = np.arange(24)
    leisure = 0.9 * np.exp(-((hours - 14) ** 2) / 14)
    if working:
        peaks = 1.0 * np.exp(-((hours - 8) ** 2) / 2) + 1.3 * np.exp(-((hours - 17.5) ** 2) / 3)
        midday = 0.25 * np.exp(-((hours - 13) ** 2) / 8)
        return 0.02 + 0.3 * midday, 0.02 + commute * peaks + 0.7 * midday
    return 0.02 + 0.6 * leisure, 0.02 + 0.4 * leisure


def day(date: dt.date, index: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng([seed, index])
    season = (date.month % 12) // 3
    holiday = int(date.strftime("%m-%d") in HOLIDAYS)
    working = int(date.weekday() < 5 and not holiday)
    yearly = np.cos(2 * np.pi * (date.timetuple().tm_yday - 200) / 365)
    base_temp = 13 + 11 * yearly + rng.normal(0, 3)
    hours = np.arange(24)
    temp = np.round(base_temp + 4 * np.sin((hours - 9) / 24 * 2 * np.pi) + rng.normal(0, 1, 24), 1)
    weather = np.minimum(
        rng.choice(4, p=[0.6, 0.25, 0.12, 0.03]) + (rng.random(24) < 0.1), 3
    ).astype("int64")
    humidity = np.round((55 + 12 * weather + rng.normal(0, 8, 24)).clip(5, 100), 1)
    wind = np.round(rng.gamma(2.0, 6.0, 24).clip(0, 79), 1)
    comfort = np.exp(-((temp - 22) ** 2) / 150)
    scale = (
        420 * comfort * np.take(WEATHER_FACTOR, weather) * (1 - wind / 160)
        * (1.0 + 0.1 * index / 365)
    )  # fmt: skip
    commute = 1.0 - COMMUTE_LOSS * (index >= REGIME_DAY)
    casual_share, registered_share = _hourly_profile(bool(working), commute)
    casual = rng.poisson(scale * casual_share)
    registered = rng.poisson(scale * registered_share)
    cnt = np.minimum(casual + registered, 1999)
    return pd.DataFrame(
        {
            "hour_start": pd.Timestamp(date) + pd.to_timedelta(hours, unit="h"),
            "season": SEASONS[season],
            "holiday": holiday,
            "workingday": working,
            "weekday": date.weekday(),
            "hour": hours,
            "weather": np.take(WEATHER, weather).astype("int64"),
            "temp": temp.clip(-19.9, 44.9),
            "humidity": humidity,
            "windspeed": wind,
            "casual": np.minimum(casual, cnt).astype("int64"),
            "registered": (cnt - np.minimum(casual, cnt)).astype("int64"),
            "cnt": cnt.astype("int64"),
        }
    )


SAMPLE = Sample(table="rentals", start=dt.date(2025, 3, 1), days=180, day=day, schema=SCHEMA)
