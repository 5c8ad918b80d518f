"""Durations written as text ("4h", "30 min", "2d") become hours at build time.

Models read the time since a stimulus (and since an earlier pulse) as numbers of hours. Real
files often store them as categories ("0h", "4h", "16h"); kept as categories, the loader would
hand the model their codes (0, 1, 2) as if they were hours. So the build converts the
columns named in `build.duration_columns`: every value must be a duration (a number with an
optional unit; plain numbers are hours) or missing, else the build stops naming the column
and a value. The conversion is logged and recorded in the atlas attrs (`obs_conversions`).

    parse_hours("90 min") == 1.5;  parse_hours("4") == 4.0;  parse_hours("late") is None
"""

from __future__ import annotations

import logging
import math
import re

import numpy as np
import pandas as pd

from vcell.errors import VCellError

log = logging.getLogger(__name__)
HOURS_PER_UNIT = {
    **dict.fromkeys(("", "h", "hr", "hrs", "hour", "hours"), 1.0),
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1 / 3600),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 1 / 60),
    **dict.fromkeys(("d", "day", "days"), 24.0),
    **dict.fromkeys(("w", "wk", "week", "weeks"), 168.0),
}
DURATION = re.compile(r"^((?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?)\s*([a-z]*)$", re.IGNORECASE)  # number, unit
MISSING = {"", "nan", "na", "n/a", "none", "null"}
MAX_RECORDED = 50  # distinct values listed in the atlas attrs


def parse_hours(text: str) -> float | None:
    """Hours in a duration such as '4h', '16 h', '30min', '2d', '1.5h' or '4'; None if it is not one."""
    match = DURATION.match(text.strip())
    if match is None or match.group(2).lower() not in HOURS_PER_UNIT:
        return None
    return float(match.group(1)) * HOURS_PER_UNIT[match.group(2).lower()]


def is_textual(values: pd.Series) -> bool:
    dtype = values.dtype
    return isinstance(dtype, (pd.CategoricalDtype, pd.StringDtype)) or dtype == object


def to_hours(values: pd.Series, column: str, sources: pd.Series) -> tuple[np.ndarray, dict[str, float]]:
    """(hours per cell (float32, NaN where missing), {distinct text: hours}) or a VCellError."""
    text = values.astype(object).where(values.notna(), None)
    mapping: dict[str, float] = {}
    for value in pd.unique(text[text.notna()]):
        word = str(value)
        hours = math.nan if word.strip().lower() in MISSING else parse_hours(word)
        if hours is None:
            source = sources[text == value].iloc[0]
            raise VCellError(
                f"obs column '{column}' (source {source}) holds '{word}', which is not a duration; the models read "
                f"'{column}' as hours",
                hint="write durations like 0h, 30min, 16 h, 2d or plain hours (missing values may be empty or NaN), "
                f"or keep '{column}' as a category with build.duration_columns=[] and point model.columns at a "
                "numeric column",
            )
        mapping[word] = hours
    hours = text.map(lambda value: math.nan if value is None else mapping[str(value)])
    return hours.to_numpy(dtype=np.float32), mapping


def convert_duration_columns(
    obs: pd.DataFrame, columns: list[str], source_column: str, seen: dict[str, dict[str, float]],
) -> pd.DataFrame:
    """obs with each textual duration column in `columns` as float32 hours. The build calls it once
    per shard; `seen` collects what each distinct text became ({column: {text: hours}})."""
    for column in columns:
        if column not in obs.columns or not is_textual(obs[column]):
            continue
        hours, mapping = to_hours(obs[column], column, obs[source_column])
        obs = obs.assign(**{column: hours})
        if column not in seen:
            log.info("obs '%s' holds durations as text: converted to hours (%s)", column,
                     ", ".join(f"'{text}' -> {value}" for text, value in list(mapping.items())[:8]))
        seen.setdefault(column, {}).update(mapping)
    return obs


def conversion_report(seen: dict[str, dict[str, float]]) -> dict:
    """{column: {"unit": "hours", "values": {text: hours}, "n_distinct": n}} for the atlas attrs."""
    report = {}
    for column, mapping in seen.items():
        shown = {text: None if math.isnan(value) else value for text, value in list(mapping.items())[:MAX_RECORDED]}
        report[column] = {"unit": "hours", "values": shown, "n_distinct": len(mapping)}  # JSON: missing is null
    return report
