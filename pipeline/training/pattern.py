"""``dicomnode train lesion-pattern``: the lesion pattern model (pipeline.lesion_pattern)
fitted on the lesion maps the bundle's own U-Net draws on training cases.

The maps come from the U-Net, not from the data set's truth masks: the model must learn
the pattern as inference will see it, misses and false lesions included. Needs a bundle
whose U-Net has a lesion head (train the segmentation first). The model goes into the
model card (``lesion_pattern``); weights are untouched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from tqdm.auto import tqdm

from ..chain import sized_for
from ..datasets import open_dataset
from ..lesion_pattern import LesionPatternModel, fit_lesion_pattern, lesion_pattern_features
from ..lung import segment_lungs
from ..models import load_bundle
from ..params import ChainParams
from .bundle import record_card_fields
from .checkpoint import TrainError

RULE = (
    "multinomial logistic regression (scikit-learn, L2, balanced class weights) on the standardised lesion "
    "pattern features of the bundle's U-Net lesion maps of the training cases"
)


def fit_bundle_pattern(
    bundle_dir: Path | str,
    data_specs: Sequence[str],
    device: str = "auto",
    c: float = 0.3,
    progress: bool = False,
    command: str = "",
) -> LesionPatternModel:
    """Measure the lesion pattern of every case with the bundle's U-Net, fit the model and
    write it into the bundle's card. Raises TrainError when the bundle has no lesion head."""
    bundle = load_bundle(bundle_dir, device)
    if bundle.segmentation is None:
        raise TrainError(f"{bundle_dir} has no segmentation U-Net; train one first (dicomnode train segmentation)")
    params = sized_for(ChainParams(), bundle.arch("segmentation"), "unet_input_size")
    datasets = [open_dataset(spec) for spec in data_specs]
    cases = [case for d in datasets for case in d]
    features, labels = [], []
    for case in tqdm(cases, desc="lesion-pattern: measuring cases", unit="case", disable=not progress):
        volume = case.load().volume
        lung = segment_lungs(volume, params, bundle.segmentation, bundle.device)
        measured = lesion_pattern_features(volume, lung)
        if measured is None:
            raise TrainError(
                f"{bundle_dir}: its U-Net draws no lesion map (a 2-class U-Net); train the "
                "segmentation with its lesion head before the lesion pattern"
            )
        features.append(measured)
        labels.append(case.label)
    counts = {label: labels.count(label) for label in sorted(set(labels))}
    training: dict[str, Any] = {
        "data_specs": list(data_specs),
        "n_cases": len(cases),
        "class_counts": counts,
        "inverse_regularisation": float(c),
        "rule": RULE,
        "command": command,
        "lesion_maps": "the bundle's U-Net (segmentation.pt)",
        "trained_on_synthetic_data": all(
            bool(d.describe().get("synthetic")) if hasattr(d, "describe") else False for d in datasets
        ),
    }
    model = fit_lesion_pattern(features, labels, c=c, training=training)
    record_card_fields(bundle_dir, {"lesion_pattern": model.as_card()})
    return model
