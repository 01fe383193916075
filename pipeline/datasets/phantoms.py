"""Synthetic cohorts: ``phantom:count=40,seed=1000,mix=1:1:1:1[,slices=40,size=128,per_patient=1,family=a]``.

Each case is built when loaded by the generator of its phantom family:
``family=a`` (default) ``pipeline.phantom.make_phantom(label, case_seed, slices, size)``,
``family=b`` ``pipeline.phantoms.make_phantom_b`` (independently constructed, with
randomised anatomy, texture, lesions and scanner, for testing across generators). The
cohort (case ids, labels and case seeds) is drawn the same way for every family. Sex
and age are drawn from the case seed so that subset reports have something to split
on; ``stage`` is the scan's rank for patients with several scans.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from ..phantom import PHANTOM_LOCALIZER, make_phantom, phantom_cohort
from ..phantoms import make_phantom_b
from ..projection import project_localizer
from ..types import CLASS_NAMES, InvalidInputError, Radiograph
from .base import Case, CaseData, Dataset, DatasetError

__all__ = ["open_phantoms", "PHANTOM_KEYS", "case_localizer"]

#: Keys of a phantom spec and what each means (for error messages).
PHANTOM_KEYS = {
    "count": "number of cases (required)",
    "seed": "cohort seed (default 0)",
    "mix": "class weights non_pneumonia:cap:influenza:covid19 (default 1:1:1:1)",
    "slices": "slices per case (default: drawn per case)",
    "size": "matrix size in pixels (default: drawn per case)",
    "per_patient": "scans per patient (default 1)",
    "family": "phantom family: a (pipeline.phantom.make_phantom, default) or b (pipeline.phantoms.make_phantom_b)",
}
_USAGE = "phantom:count=40,seed=1000,mix=1:1:1:1[,slices=40,size=128,per_patient=1,family=a]"

#: Phantom families: generator function and the name reports give it.
FAMILIES = {
    "a": (make_phantom, "pipeline.phantom.make_phantom"),
    "b": (make_phantom_b, "pipeline.phantoms.make_phantom_b"),
}


def _load(family: str, label: str, seed: int, slices: int | None, size: int | None) -> CaseData:
    p = FAMILIES[family][0](label, seed, slices, size)
    return CaseData(p.volume, p.lung_mask, p.lesion_mask, p.lobe_mask)


def case_localizer(case: Case, data: CaseData) -> Radiograph | None:
    """The localizer of a loaded case: for a phantom, ``Phantom.localizer()`` of its volume
    (the same projection, geometry and seeded noise); None for data sets without one."""
    if case.extras.get("family") not in FAMILIES or "seed" not in case.extras:
        return None
    return project_localizer(data.volume, PHANTOM_LOCALIZER, seed=int(case.extras["seed"]))


def _int(key: str, text: str, spec: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise DatasetError(f"data spec {spec!r}: {key}={text!r} is not a whole number ({PHANTOM_KEYS[key]})") from None
    if value < low:
        raise DatasetError(f"data spec {spec!r}: {key} must be at least {low}, got {value}")
    return value


def parse_phantom_spec(spec: str) -> dict:
    """The options of a phantom spec, checked; DatasetError says what is wrong."""
    body = spec.split(":", 1)[1] if ":" in spec else ""
    opts: dict = {
        "seed": 0,
        "mix": (1.0,) * len(CLASS_NAMES),
        "slices": None,
        "size": None,
        "per_patient": 1,
        "family": "a",
    }
    seen = set()
    for part in filter(None, (p.strip() for p in body.split(","))):
        if "=" not in part:
            raise DatasetError(f"data spec {spec!r}: {part!r} is not key=value; write e.g. {_USAGE}")
        key, value = (x.strip() for x in part.split("=", 1))
        if key not in PHANTOM_KEYS:
            raise DatasetError(f"data spec {spec!r}: unknown key {key!r}; known keys: {', '.join(PHANTOM_KEYS)}")
        if key in seen:
            raise DatasetError(f"data spec {spec!r}: {key} given twice")
        seen.add(key)
        if key == "mix":
            try:
                weights = tuple(float(w) for w in value.split(":"))
            except ValueError:
                weights = ()
            if len(weights) != len(CLASS_NAMES) or any(w < 0 for w in weights) or sum(weights) <= 0:
                raise DatasetError(
                    f"data spec {spec!r}: mix={value!r} must be {len(CLASS_NAMES)} non-negative "
                    f"weights separated by ':' for {':'.join(CLASS_NAMES)}"
                )
            opts["mix"] = weights
        elif key == "seed":
            opts["seed"] = _int(key, value, spec, 0)
        elif key == "count":
            opts["count"] = _int(key, value, spec, 1)
        elif key == "slices":
            opts["slices"] = _int(key, value, spec, 8)
        elif key == "size":
            opts["size"] = _int(key, value, spec, 32)
        elif key == "family":
            family = value.lower()
            if family not in FAMILIES:
                raise DatasetError(
                    f"data spec {spec!r}: family={value!r} is not a phantom family; "
                    f"use one of {', '.join(FAMILIES)} ({PHANTOM_KEYS['family']})"
                )
            opts["family"] = family
        else:
            opts["per_patient"] = _int(key, value, spec, 1)
    if "count" not in opts:
        raise DatasetError(f"data spec {spec!r}: count is required; write e.g. {_USAGE}")
    return opts


def open_phantoms(spec: str) -> Dataset:
    opts = parse_phantom_spec(spec)
    cases = []
    try:
        cohort = list(phantom_cohort(opts["count"], opts["seed"], opts["mix"], opts["per_patient"]))
    except InvalidInputError as e:
        raise DatasetError(f"data spec {spec!r}: {e}") from e
    family = opts["family"]
    name = FAMILIES[family][1].rsplit(".", 1)[1]
    for entry in cohort:
        rng = np.random.default_rng([entry.seed, 0x5E7])
        scan = int(entry.case_id.rsplit("-s", 1)[1])
        cases.append(
            Case(
                case_id=entry.case_id,
                patient_id=entry.patient_id,
                label=entry.label,
                sex="M" if rng.uniform() < 0.55 else "F",
                age=float(int(rng.uniform(18, 90))),
                stage=str(scan + 1),
                source=f"{name}({entry.label!r}, {entry.seed}, {opts['slices']}, {opts['size']})",
                extras={"seed": str(entry.seed), "family": family},
                loader=partial(_load, family, entry.label, entry.seed, opts["slices"], opts["size"]),
            )
        )
    details = {
        "generator": FAMILIES[family][1],
        "family": family,
        "seed": opts["seed"],
        "mix": dict(zip(CLASS_NAMES, opts["mix"], strict=True)),
        "slices": opts["slices"],
        "size_px": opts["size"],
        "scans_per_patient": opts["per_patient"],
    }
    return Dataset(spec, "phantom", cases, synthetic=True, details=details)
