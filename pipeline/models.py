"""Model bundles: weights plus a model card, loaded once per process.

A bundle is a folder::

    model_card.json   machine-readable card (see ModelCard below)
    MODEL_CARD.md     the same for people (written by ``write_bundle``)
    classifier.pt     state_dict of the 4-class slice classifier
    locator.pt        state_dict of the 2-class COVID-infectious slice locator
    segmentation.pt   state_dict of the lung U-Net (optional: without it the classical
                      HU-threshold method segments the lungs)
    cxr.pt            state_dict of the CXR classifier of the localizer / radiograph
                      (optional, pipeline.cxr; its classes are in its architecture dict)
    domain_reference.npz  the out-of-domain guard's reference (pipeline.domain; optional,
                      written by ``dicomnode calibrate``, pinned by sha256 in the card)

The card's ``operating_points`` (pipeline.decision.OperatingPoints) hold the decision
thresholds chosen on a validation cohort by ``dicomnode calibrate``.

``model_card.json`` holds, per model, its file name, sha256 and architecture dict
(``pipeline.nets``), and for the bundle: name, version, disclaimer, whether it was
trained on synthetic data, the training data spec and command line, and metrics as
measured by an evaluation run (with the data they were measured on).

The bundle's sha256 is the sha256 of ``model_card.json``, which itself pins every
weight file's sha256: one number identifies the whole bundle in reports.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

import torch

from .card import ModelCard, ModelEntry
from .decision import OperatingPoints
from .device import resolve_device
from .domain import DomainReference
from .figures import EvaluationMetrics, Figure, TaskFigures
from .lesion_pattern import LesionPatternModel
from .nets import build_network
from .severity import LOBES
from .types import InvalidInputError, ModelBundleError, ModelInfo

CARD_FILE = "model_card.json"
DOMAIN_FILE = "domain_reference.npz"
MODEL_ROLES = ("segmentation", "classifier", "locator", "cxr")
SYNTHETIC_DISCLAIMER = (
    "DEMO MODEL trained on synthetic phantoms only. Not validated on patient data. Not for clinical use."
)

#: Where the shipped demo bundle lies (the node's default).
DEFAULT_BUNDLE_DIR = Path(__file__).resolve().parent.parent / "models" / "covid-ct-demo"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class ModelBundle:
    """Loaded networks (eval mode, on ``device``) and the card they came with."""

    path: Path
    card: ModelCard
    classifier: torch.nn.Module
    locator: torch.nn.Module
    segmentation: torch.nn.Module | None
    device: torch.device
    sha256: str
    operating_points: OperatingPoints = OperatingPoints()
    domain_reference: DomainReference | None = None
    #: The lesion pattern model (pipeline.lesion_pattern), kept in the card; None: none.
    lesion_pattern: LesionPatternModel | None = None
    #: The CXR classifier of the localizer / a radiograph (pipeline.cxr); None: none.
    cxr: torch.nn.Module | None = None

    @property
    def info(self) -> ModelInfo:
        return model_info(self.path, self.card, self.sha256)

    def arch(self, role: str) -> Mapping[str, Any]:
        arch = self.card.architecture(role)
        if arch is None:
            raise ModelBundleError(f"model bundle {self.path} has no '{role}' model")
        return arch


def model_info(bundle_dir: Path, card: ModelCard, sha256: str) -> ModelInfo:
    """What every report says of the bundle: name, version, card sha256, disclaimer."""
    return ModelInfo(
        name=card.name or Path(bundle_dir).name,
        version=card.version,
        sha256=sha256,
        disclaimer=card.disclaimer,
        trained_on_synthetic_data=card.trained_on_synthetic_data,
    )


def bundle_info(bundle_dir: Path | str) -> ModelInfo:
    """``ModelBundle.info`` without loading the networks (a node whose workers load them)."""
    bundle_dir = Path(bundle_dir)
    return model_info(bundle_dir, read_card(bundle_dir), sha256_file(bundle_dir / CARD_FILE))


def read_card(bundle_dir: Path | str) -> ModelCard:
    """The bundle's card, checked and typed (pipeline.card); ModelBundleError says what is wrong."""
    bundle_dir = Path(bundle_dir)
    card_path = bundle_dir / CARD_FILE
    if not card_path.is_file():
        raise ModelBundleError(
            f"model bundle {bundle_dir}: {card_path} is missing "
            f"(train one with 'dicomnode train' or point the config at a bundle folder)"
        )
    try:
        data = json.loads(card_path.read_text())
    except (OSError, ValueError) as e:
        raise ModelBundleError(f"model bundle card {card_path} cannot be read: {e}") from e
    return ModelCard.from_mapping(data, str(card_path), default_name=bundle_dir.resolve().name)


def _load_network(bundle_dir: Path, entry: ModelEntry, device: torch.device) -> torch.nn.Module:
    weights = bundle_dir / entry.file
    if not weights.is_file():
        raise ModelBundleError(f"model bundle {bundle_dir}: weights file {weights} is missing")
    expected = entry.sha256
    actual = sha256_file(weights)
    if expected and expected != actual:
        raise ModelBundleError(
            f"model bundle {bundle_dir}: {weights} is corrupt "
            f"(sha256 {actual[:12]}..., model card says {str(expected)[:12]}...)"
        )
    net = build_network(entry.architecture)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    except Exception as e:  # torch raises many types for a damaged file
        raise ModelBundleError(f"model bundle {bundle_dir}: {weights} cannot be loaded: {e}") from e
    return net.to(device).eval()


def load_bundle(bundle_dir: Path | str, device: str = "auto") -> ModelBundle:
    """Load a bundle (checks every sha256). Raises ModelBundleError naming the bad file."""
    bundle_dir = Path(bundle_dir)
    card = read_card(bundle_dir)
    dev = resolve_device(device)
    nets = {role: _load_network(bundle_dir, card.models[role], dev) for role in MODEL_ROLES if role in card.models}
    try:
        op = OperatingPoints.from_card({"operating_points": card.operating_points})
    except (TypeError, ValueError) as e:
        raise ModelBundleError(f"model bundle {bundle_dir}: operating_points in the card are invalid: {e}") from e
    pattern = None
    if card.lesion_pattern:
        try:
            pattern = LesionPatternModel.from_card(card.lesion_pattern)
        except InvalidInputError as e:
            raise ModelBundleError(f"model bundle {bundle_dir}: {e}") from e
    return ModelBundle(
        path=bundle_dir,
        card=card,
        classifier=nets["classifier"],
        locator=nets["locator"],
        segmentation=nets.get("segmentation"),
        device=dev,
        sha256=sha256_file(bundle_dir / CARD_FILE),
        operating_points=op,
        domain_reference=load_domain_reference(bundle_dir, card),
        lesion_pattern=pattern,
        cxr=nets.get("cxr"),
    )


def load_domain_reference(bundle_dir: Path, card: ModelCard) -> DomainReference | None:
    """The bundle's out-of-domain reference (checked against its sha256), or None."""
    entry = card.domain_reference
    if not entry:
        return None
    import numpy as np

    path = Path(bundle_dir) / str(entry.get("file", DOMAIN_FILE))
    if not path.is_file():
        raise ModelBundleError(f"model bundle {bundle_dir}: {path} is missing (the card lists a domain reference)")
    if entry.get("sha256") and sha256_file(path) != entry["sha256"]:
        raise ModelBundleError(f"model bundle {bundle_dir}: {path} is corrupt (sha256 differs from the card)")
    try:
        with np.load(path, allow_pickle=False) as arrays:
            return DomainReference.from_arrays({k: arrays[k] for k in arrays.files})
    except (OSError, ValueError, KeyError) as e:
        raise ModelBundleError(f"model bundle {bundle_dir}: {path} cannot be read: {e}") from e


_cache: dict[tuple[str, str], ModelBundle] = {}
_cache_lock = threading.Lock()


def load_bundle_cached(bundle_dir: Path | str, device: str = "auto") -> ModelBundle:
    """Load once per process: the node calls this for every job."""
    key = (str(Path(bundle_dir).resolve()), device)
    with _cache_lock:
        if key not in _cache:
            _cache[key] = load_bundle(bundle_dir, device)
        return _cache[key]


def warm_up(bundle: ModelBundle, size: int = 64) -> None:
    """One tiny forward pass of each network, and a backward pass of the classifier (the
    Grad-CAM path): kernels are chosen and memory is allocated before the first real case."""
    dev = bundle.device
    with torch.inference_mode():
        if bundle.segmentation is not None:
            bundle.segmentation(torch.zeros((1, 1, size, size), device=dev))
        bundle.locator(torch.zeros((1, 3, size, size), device=dev))
        if bundle.cxr is not None:
            bundle.cxr(torch.zeros((1, 2, size, size), device=dev))
    x = torch.zeros((1, 3, size, size), device=dev, requires_grad=True)
    bundle.classifier(x).sum().backward()


def write_bundle(
    out_dir: Path | str,
    networks: Mapping[str, torch.nn.Module],
    architectures: Mapping[str, Mapping[str, Any]],
    card: Mapping[str, Any],
) -> Path:
    """Write weights and the model card. ``card`` holds the bundle-level fields
    (name, version, disclaimer, trained_on_synthetic_data, training, metrics...);
    per-model entries (file, sha256, architecture) are filled in here, keeping any
    per-model extras already in ``card['models'][role]``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    full = dict(card)
    models = {role: dict(v) for role, v in dict(card.get("models", {})).items()}
    for role, net in networks.items():
        if role not in MODEL_ROLES:
            raise ValueError(f"unknown model role {role!r}; expected one of {MODEL_ROLES}")
        fname = f"{role}.pt"
        state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
        torch.save(state, out / fname)
        entry = models.get(role, {})
        entry.update(file=fname, sha256=sha256_file(out / fname), architecture=dict(architectures[role]))
        models[role] = entry
    full["models"] = models
    (out / CARD_FILE).write_text(json.dumps(full, indent=2, sort_keys=False) + "\n")
    (out / "MODEL_CARD.md").write_text(render_card_markdown(full))
    return out


def render_card_markdown(card: Mapping[str, Any]) -> str:
    """A readable model card; everything in it comes from the JSON card."""
    lines = [f"# Model card: {card.get('name', 'unnamed')} {card.get('version', '')}", ""]
    if card.get("disclaimer"):
        lines += [f"**{card['disclaimer']}**", ""]
    if card.get("description"):
        lines += [str(card["description"]), ""]
    metrics = card.get("metrics") or {}
    if metrics.get("evaluations"):
        lines += _evaluations_markdown(metrics["evaluations"], card.get("cross_family") or {})
    else:
        lines += _headline_markdown(metrics)
    lines += _operating_points_markdown(card)
    lines += _pattern_markdown(card.get("lesion_pattern"))
    lines += _cxr_markdown(card)
    lines += ["## Models", "", "| role | file | sha256 | architecture |", "|---|---|---|---|"]
    for role, entry in card.get("models", {}).items():
        lines.append(
            f"| {role} | {entry.get('file')} | `{str(entry.get('sha256', ''))[:16]}...` | "
            f"`{json.dumps(entry.get('architecture', {}))}` |"
        )
    for role, entry in card.get("models", {}).items():
        if entry.get("training"):
            lines += ["", f"## Training: {role}", "", "```json", json.dumps(entry["training"], indent=2), "```"]
    if card.get("metrics"):
        lines += ["", "## Metrics as measured", "", "```json", json.dumps(card["metrics"], indent=2), "```"]
    lines.append("")
    return "\n".join(lines)


def _cxr_markdown(card: Mapping[str, Any]) -> list[str]:
    """The CXR branch: its model, how it was trained, CT alone vs CXR alone vs fused."""
    from .figures.cxr import CxrComparison, comparison_markdown

    entry = (card.get("models") or {}).get("cxr")
    section = card.get("cxr") or {}
    if not entry:
        return []
    training = entry.get("training") or {}
    val = training.get("validation") or {}
    counts = ", ".join(f"{k} {v}" for k, v in (training.get("class_counts") or {}).items())
    lines = [
        "## CXR branch (the CT localizer read as a chest x-ray)",
        "",
        f"Classes: {', '.join(section.get('classes') or entry.get('architecture', {}).get('classes') or [])}. "
        f"Input: {training.get('input', '?')}. Trained by `{training.get('command', '?')}`: "
        f"{training.get('n_train_cases', '?')} training and {training.get('n_val_cases', '?')} validation cases "
        f"({counts}; held-out patients, last epoch: validation AUC {val.get('val_auc', float('nan')):.3f}, "
        f"accuracy {val.get('val_accuracy', float('nan')):.3f})"
        + (" on synthetic phantoms only" if training.get("trained_on_synthetic_data") else "")
        + ".",
        "",
        f"Fusion: {section.get('fusion_rule', '?')}. The report's decision stays the CT's; the fused decision "
        "is stated beside it.",
        "",
    ]
    for name, record in (section.get("evaluations") or {}).items():
        lines += [
            f"### Measured: {name}",
            "",
            f"Data `{record.get('data_spec', '?')}` ({record.get('held_out', '')}); "
            f"command `{record.get('command', '?')}`. Synthetic phantoms only: these figures say nothing "
            "about patients.",
            "",
            *comparison_markdown(CxrComparison.from_json(record)),
        ]
    return lines


def _pattern_markdown(entry: Mapping[str, Any] | None) -> list[str]:
    """The lesion pattern model: what it reads, how it was fitted, its weights."""
    if not entry:
        return []
    training = entry.get("training") or {}
    counts = ", ".join(f"{k} {v}" for k, v in (training.get("class_counts") or {}).items())
    lines = [
        "## Lesion pattern",
        "",
        "Pneumonia type from where the U-Net's lesions lie and how dense they are (pipeline.lesion_pattern): "
        f"{training.get('rule', 'a logistic model')}; fitted by `{training.get('command', '?')}` on "
        f"{training.get('n_cases', '?')} cases ({counts}).",
        "",
        "| feature | mean | sd | " + " | ".join(f"weight {c}" for c in entry.get("classes", [])) + " |",
        "|---|---|---|" + "---|" * len(entry.get("classes", [])),
    ]
    coef = entry.get("coef") or []
    for j, name in enumerate(entry.get("feature_names", [])):
        weights = " | ".join(f"{row[j]:+.2f}" for row in coef)
        lines.append(f"| {name} | {entry['mean'][j]:.3g} | {entry['scale'][j]:.3g} | {weights} |")
    return lines + [""]


def _ci(figure: Figure | None) -> str:
    """'0.977 (0.944-0.999)' from an evaluation figure; "n/a" when undefined."""
    return "n/a" if figure is None else figure.text()


def _ci_json(figure: Any) -> str:
    """``_ci`` of a figure as JSON ({"value", "ci_low", "ci_high"}) in an older card's
    headline record; "n/a" for anything else."""
    return _ci(Figure.from_json(figure)) if isinstance(figure, Mapping) else "n/a"


#: What a cell of the measured-performance table shows: a figure, a number or nothing.
CellValue = Figure | float | int | None
Cell = Callable[[EvaluationMetrics], CellValue]
S = TypeVar("S")


def _in(section: Callable[[EvaluationMetrics], S | None], pick: Callable[[S], CellValue]) -> Cell:
    """A cell from an optional section of the figures ("n/a" when it was not measured)."""

    def cell(m: EvaluationMetrics) -> CellValue:
        found = section(m)
        return None if found is None else pick(found)

    return cell


def _task(name: str, pick: Callable[[TaskFigures], Figure | None]) -> Cell:
    return lambda m: pick(m.tasks[name]) if name in m.tasks else None


def _lobe_dice(name: str) -> Cell:
    return _in(lambda m: m.lobes, lambda lobes: lobes.per_lobe[name].dice if name in lobes.per_lobe else None)


#: Rows of the measured-performance table: label, separator of its cells, the cells.
_ROWS: tuple[tuple[str, str, tuple[Cell, ...]], ...] = (
    ("cases", "; ", (lambda m: m.n_cases,)),
    ("4-class AUC of the slice classifier, macro", "; ", (lambda m: m.classes.multiway_auc.macro,)),
    ("4-class AUC of the slice classifier, micro", "; ", (lambda m: m.classes.multiway_auc.micro,)),
    (
        "accuracy of the stated decision (indeterminate / out of domain count as wrong)",
        "; ",
        (_in(lambda m: m.decision, lambda d: d.accuracy),),
    ),
    ("accuracy among stated (class) decisions", "; ", (_in(lambda m: m.decision, lambda d: d.accuracy_of_stated),)),
    ("indeterminate rate", "; ", (_in(lambda m: m.decision, lambda d: d.indeterminate_rate),)),
    ("out-of-domain rate", "; ", (_in(lambda m: m.decision, lambda d: d.out_of_domain_rate),)),
    (
        "non-pneumonia cases given a pneumonia decision (count)",
        "; ",
        (_in(lambda m: m.decision, lambda d: d.non_pneumonia_called_pneumonia),),
    ),
    ("accuracy of the slice classifier's 4-class argmax (label)", "; ", (lambda m: m.classes.accuracy,)),
    ("pneumonia vs non-pneumonia: AUC", "; ", (_task("pneumonia_vs_non_pneumonia", lambda t: t.auc),)),
    (
        "pneumonia vs non-pneumonia: sensitivity at the stored threshold",
        " / ",
        (_task("pneumonia_vs_non_pneumonia", lambda t: t.sensitivity),),
    ),
    (
        "pneumonia vs non-pneumonia: specificity at the stored threshold",
        "; ",
        (_task("pneumonia_vs_non_pneumonia", lambda t: t.specificity),),
    ),
    ("COVID-19 vs CAP: AUC", "; ", (_task("covid19_vs_cap", lambda t: t.auc),)),
    (
        "COVID-19 vs CAP: sensitivity / specificity",
        " / ",
        (_task("covid19_vs_cap", lambda t: t.sensitivity), _task("covid19_vs_cap", lambda t: t.specificity)),
    ),
    ("COVID-19 vs influenza: AUC", "; ", (_task("covid19_vs_influenza", lambda t: t.auc),)),
    (
        "COVID-19 vs influenza: sensitivity / specificity",
        " / ",
        (
            _task("covid19_vs_influenza", lambda t: t.sensitivity),
            _task("covid19_vs_influenza", lambda t: t.specificity),
        ),
    ),
    ("lung Dice (chain)", "; ", (_in(lambda m: m.lung_dice, lambda d: d.mean),)),
    (
        "lesion voxels inside the lung mask (mean; min)",
        "; ",
        (_in(lambda m: m.lesion_inclusion, lambda i: i.mean), _in(lambda m: m.lesion_inclusion, lambda i: i.min)),
    ),
    ("lesion Dice of the U-Net's lesion map", "; ", (_in(lambda m: m.lesion_dice, lambda d: d.dice),)),
    (
        "lesion share of the lung as a pneumonia score: AUC",
        "; ",
        (_in(lambda m: m.lesion_share, lambda s: s.pneumonia_auc),),
    ),
    (
        "lesion pattern model: 4-class AUC, macro",
        "; ",
        (_in(lambda m: m.lesion_pattern, lambda p: p.multiway_auc_macro),),
    ),
    (
        "pneumonia type right, pneumonia cases: lesion pattern / slice classifier",
        " / ",
        (
            _in(lambda m: m.lesion_pattern, lambda p: p.type_accuracy),
            _in(lambda m: m.lesion_pattern, lambda p: p.type_accuracy_classifier),
        ),
    ),
    ("infectious-slice AUC, all classes", "; ", (_in(lambda m: m.infectious_slices, lambda i: i.auc),)),
    ("infectious-slice F1 at the stored threshold", "; ", (_in(lambda m: m.infectious_slices, lambda i: i.f1),)),
    ("COVID-19 infectious-slice AUC (paper's cohort)", "; ", (_in(lambda m: m.locating, lambda loc: loc.auc),)),
    (
        "infectious slices flagged by the locator per non-pneumonia case (mean; max)",
        "; ",
        (
            _in(lambda m: m.non_pneumonia_flagged_slices, lambda n: n.mean),
            _in(lambda m: m.non_pneumonia_flagged_slices, lambda n: n.max),
        ),
    ),
    (
        "infectious slices the report lists per non-pneumonia case (mean; max)",
        "; ",
        (
            _in(lambda m: m.non_pneumonia_stated_slices, lambda n: n.mean),
            _in(lambda m: m.non_pneumonia_stated_slices, lambda n: n.max),
        ),
    ),
    (
        "Grad-CAM heat inside the lung, raw (mean; min over overlays)",
        "; ",
        (_in(lambda m: m.heat_inside_lung, lambda h: h.mean), _in(lambda m: m.heat_inside_lung, lambda h: h.min)),
    ),
    ("Grad-CAM heat on lesions, shown (mean)", "; ", (_in(lambda m: m.heat_on_lesion, lambda h: h.mean),)),
    (
        "whole-lung involvement vs truth, percentage points (mean absolute error; bias)",
        "; ",
        (
            _in(lambda m: m.severity, lambda s: s.involvement_mae_points),
            _in(lambda m: m.severity, lambda s: s.involvement_bias_points),
        ),
    ),
    (
        "MosMedData grade from the involvement, agreement with truth",
        "; ",
        (_in(lambda m: m.severity, lambda s: s.grade_agreement),),
    ),
    (
        "involvement given to non-pneumonia cases, % of the lung (mean; max)",
        "; ",
        (
            _in(lambda m: m.severity.non_pneumonia_involvement_percent if m.severity else None, lambda h: h.mean),
            _in(lambda m: m.severity.non_pneumonia_involvement_percent if m.severity else None, lambda h: h.max),
        ),
    ),
    (
        "MosMedData grade, quadratic weighted kappa vs the truth grade",
        "; ",
        (_in(lambda m: m.severity.grade if m.severity else None, lambda g: g.kappa_quadratic),),
    ),
    ("lobe map Dice, mean over the five lobes", "; ", (_in(lambda m: m.lobes, lambda lobes: lobes.mean_dice),)),
    (
        "lobe map Dice: right upper; right middle; right lower; left upper; left lower",
        "; ",
        tuple(_lobe_dice(name) for name in LOBES),
    ),
)


def _cell_text(value: CellValue) -> str:
    if isinstance(value, Figure):
        return _ci(value)
    if isinstance(value, float):
        return f"{value:.3f}"
    return "n/a" if value is None else str(value)


def _evaluations_markdown(evaluations: Mapping[str, Any], cross: Mapping[str, Any]) -> list[str]:
    """One table: the shipped bundle on each held-out cohort, and the cross-family runs."""
    columns = [(name, rec) for name, rec in evaluations.items()] + [(name, rec) for name, rec in cross.items()]
    lines = [
        "## Measured performance",
        "",
        "Every figure was measured by `dicomnode evaluate` (95% bootstrap intervals over cases in brackets) "
        "on synthetic phantoms only: it says nothing about patients. Columns:",
        "",
    ]
    for name, rec in columns:
        lines.append(
            f"- **{name}**: {rec.get('held_out', '')}; data `{rec.get('data_spec', '?')}`; "
            f"command `{rec.get('command', '?')}`"
        )
    lines += ["", "| figure | " + " | ".join(name for name, _ in columns) + " |", "|---|" + "---|" * len(columns)]
    figures = [EvaluationMetrics.from_json(rec) for _, rec in columns]
    for label, sep, cells in _ROWS:
        lines.append(f"| {label} | " + " | ".join(sep.join(_cell_text(c(m)) for c in cells) for m in figures) + " |")
    return lines + [""]


def _operating_points_markdown(card: Mapping[str, Any]) -> list[str]:
    op = card.get("operating_points")
    if not op:
        return [
            "## Operating points",
            "",
            "Not calibrated: the chain uses the paper's 0.5 thresholds and no "
            "out-of-domain guard. Run `dicomnode calibrate`.",
            "",
        ]
    lines = [
        "## Operating points",
        "",
        f"Chosen by `{op.get('command', 'dicomnode calibrate')}` on "
        f"{op.get('n_cases', '?')} calibration cases (`{', '.join(op.get('data_specs', []))}`): "
        f"{op.get('rule', '')}.",
        "",
        "| operating point | value |",
        "|---|---|",
    ]
    for key in (
        "pneumonia_vs_non_pneumonia",
        "covid19_vs_cap",
        "covid19_vs_influenza",
        "locator_threshold",
        "pneumonia_margin",
        "margin",
        "min_infected_slices",
        "lesion_share_threshold",
        "lesion_band",
        "pattern_weight",
    ):
        if key in op:
            lines.append(f"| {key} | {op[key]:.4g} |" if isinstance(op[key], float) else f"| {key} | {op[key]} |")
    if float(op.get("lesion_share_threshold") or 0) > 0:
        lines += [
            "",
            "Pneumonia against non-pneumonia is decided on the U-Net's lesion share of the lung "
            "(`lesion_share_threshold`, indeterminate within a factor `lesion_band` of it), the slice "
            "classifier's pneumonia score as a check; `min_infected_slices` applies only without a "
            "lesion map (pipeline.decision).",
        ]
    weight = float(op.get("pattern_weight") or 0)
    if weight >= 1:
        lines += [
            "",
            "The pneumonia type is read from the lesion pattern model (`pattern_weight` 1, section "
            "'Lesion pattern'); the slice classifier's type is reported beside it, not used.",
        ]
    elif weight > 0:
        lines += [
            "",
            f"The pneumonia type is the blend of the lesion pattern model (weight `pattern_weight` = "
            f"{weight:.2f}) and the slice classifier (the rest).",
        ]
    ref = card.get("domain_reference")
    if ref:
        lines += [
            "",
            f"Out-of-domain guard: {ref.get('rule', '')}; thresholds "
            + ", ".join(f"{k} {v:.2f}" for k, v in (ref.get("thresholds") or {}).items())
            + ". A study whose largest scaled distance exceeds 1 gets the decision `out_of_domain`.",
        ]
    return lines + [""]


def _headline_markdown(metrics: Mapping[str, Any]) -> list[str]:
    """The figures people look for first, as measured by the evaluation run in the card."""
    if not metrics.get("per_class_auc"):
        return []
    lines = [
        "## Measured performance",
        "",
        f"Measured by `{metrics.get('measured_by', 'an evaluation run')}` on "
        f"`{metrics.get('data_spec', '?')}` ({metrics.get('n_cases', '?')} cases"
        + (f"; {metrics['held_out']}" if metrics.get("held_out") else "")
        + "), "
        "95% bootstrap intervals in brackets:",
        "",
        "| figure | value (95% CI) |",
        "|---|---|",
    ]
    multi = metrics.get("multiway_auc", {})
    lines.append(f"| 4-class AUC, macro | {_ci_json(multi.get('macro'))} |")
    lines.append(f"| 4-class AUC, micro | {_ci_json(multi.get('micro'))} |")
    for name, fig in metrics["per_class_auc"].items():
        lines.append(f"| AUC {name} vs rest | {_ci_json(fig)} |")
    if metrics.get("accuracy"):
        lines.append(f"| accuracy (multi-way label) | {_ci_json(metrics['accuracy'])} |")
    for name, task in (metrics.get("tasks") or {}).items():
        lines.append(
            f"| task {name}: AUC / sensitivity / specificity at "
            f"{metrics.get('decision_threshold', 0.5)} | {_ci_json(task.get('auc'))} / "
            f"{_ci_json(task.get('sensitivity'))} / {_ci_json(task.get('specificity'))} |"
        )
    dice = metrics.get("lung_dice") or {}
    if dice.get("mean"):
        lines.append(f"| lung Dice, {dice.get('method', 'chain')} | {_ci_json(dice['mean'])} |")
    if dice.get("classical_mean"):
        lines.append(f"| lung Dice, classical | {_ci_json(dice['classical_mean'])} |")
    loc = metrics.get("locating") or {}
    if loc.get("auc"):
        lines.append(f"| infected-slice locating AUC ({loc.get('n_slices', '?')} slices) | {_ci_json(loc['auc'])} |")
    if metrics.get("command"):
        lines += ["", f"Command: `{metrics['command']}`"]
    return lines + [""]
