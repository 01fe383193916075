"""What every section of pipeline.figures is made of: a ``Figure`` (a value with its
bootstrap interval) and the JSON helpers the sections' ``to_json`` / ``from_json`` share."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence, TypeVar

import numpy as np

from ..metrics import Estimate

T = TypeVar("T")


def json_ready(obj: Any) -> Any:
    """NaN/inf -> None and numpy scalars -> Python, so metrics.json is strict JSON."""
    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_ready(obj.tolist())
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    return str(obj)  # paths and the like in a data set's description


def put(out: dict[str, Any], key: str, value: Any) -> None:
    """``out[key]`` = the value's JSON, left out when the value is None."""
    if value is not None:
        out[key] = value.to_json() if hasattr(value, "to_json") else value


def opt(d: Mapping[str, Any], key: str, parse: Callable[[Any], T]) -> T | None:
    """``parse(d[key])``, None when the key is absent or null."""
    value = d.get(key)
    return None if value is None else parse(value)


def opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True)
class Figure:
    """A figure with its bootstrap percentile interval; None where undefined (a class
    absent) and, for the bounds, where no interval was asked for."""

    value: float | None
    ci_low: float | None = None
    ci_high: float | None = None

    @classmethod
    def from_estimate(cls, est: Estimate) -> Figure:
        d = est.as_dict()
        return cls(d["value"], d["ci_low"], d["ci_high"])

    def to_json(self) -> dict[str, float | None]:
        return {"value": self.value, "ci_low": self.ci_low, "ci_high": self.ci_high}

    def text(self) -> str:
        """'0.977 (0.944-0.999)'; "n/a" when undefined."""
        if self.value is None:
            return "n/a"
        out = f"{self.value:.3f}"
        if self.ci_low is not None and self.ci_high is not None:
            out += f" ({self.ci_low:.3f}-{self.ci_high:.3f})"
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Figure:
        return cls(opt_float(d.get("value")), opt_float(d.get("ci_low")), opt_float(d.get("ci_high")))


def figure_map(d: Mapping[str, Any]) -> dict[str, Figure]:
    return {str(k): Figure.from_json(v) for k, v in d.items()}


def count_rows(rows: Sequence[Sequence[Any]]) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(int(x) for x in row) for row in rows)
