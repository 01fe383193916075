"""What the objects say for each decision, in one place, so SR, SC, KOS and the CLI agree.

Every object states ``result.decision`` (made once by the chain from the bundle's
calibrated operating points), never the argmax of the class probabilities: a 50.2 % vs
49.7 % split must read "indeterminate", not "CAP". Only a pneumonia decision presents
the lesion locator's slices as infectious slices, and only a COVID-19 decision calls
them "COVID-19 infectious slices".
"""

from __future__ import annotations

from typing import Mapping, Sequence

from pipeline.types import CLASS_NAMES, TASK_NAMES, AnalysisResult

from .common import CLASS_DISPLAY

#: Short class names for parentheses and burned-in captions.
CLASS_SHORT = {"non_pneumonia": "no pneumonia", "cap": "CAP", "influenza": "influenza", "covid19": "COVID-19"}
#: How each decision is named in descriptions, identifiers and captions.
DECISION_DISPLAY = {
    **CLASS_DISPLAY,
    "indeterminate": "Indeterminate",
    "out_of_domain": "Cannot assess (out of domain)",
}
#: The out-of-domain score is scaled so that its threshold is 1 (pipeline.types.DomainCheck).
OUT_OF_DOMAIN_THRESHOLD = 1.0
#: What an out-of-domain report says instead of a class (what the private code means).
CANNOT_ASSESS_TEXT = "The AI model cannot assess this study: it differs from the model's training data"


def states_infected_slices(result: AnalysisResult) -> bool:
    """Only a pneumonia decision presents the locator's slices as infectious slices: under
    "no pneumonia" they would contradict the decision, under indeterminate or out-of-domain
    they would be a finding the model does not stand behind."""
    return result.decision.is_pneumonia


def shows_explanations(result: AnalysisResult) -> bool:
    """Grad-CAM overlays explain a class the model can stand behind; out of domain it cannot."""
    return result.decision.value != "out_of_domain"


def shows_probabilities(result: AnalysisResult) -> bool:
    """Out of domain, the probabilities are not reported: they would read as a claim."""
    return result.decision.value != "out_of_domain"


def infected_name(decision: str, plural: bool = True) -> str:
    """'COVID-19 infectious slices' under covid19, 'infectious slices (CAP)' under cap..."""
    noun = "infectious slices" if plural else "infectious slice"
    if decision == "covid19":
        return f"COVID-19 {noun}"
    if decision in CLASS_SHORT and decision != "non_pneumonia":
        return f"{noun} ({CLASS_SHORT[decision]})"
    return noun


def upper_first(text: str) -> str:
    """'infectious slices (CAP)' -> 'Infectious slices (CAP)' (str.capitalize lowers the rest)."""
    return text[:1].upper() + text[1:]


def decision_line(result: AnalysisResult) -> str:
    """'AI decision: COVID-19', 'AI decision: indeterminate', ...

    No single probability: the decision weighs the lesion burden, the lesion pattern and
    the slice classifier (pipeline.decision), and the classifier's probability of the
    decided class can be low when the lesions decided; the reason sentence gives the
    evidence in numbers."""
    return _decision_words(result, CLASS_DISPLAY, "cannot assess this study (out of domain)")


def caption_line(result: AnalysisResult) -> str:
    """The decision as a short burned-in caption line."""
    return _decision_words(result, CLASS_SHORT, "cannot assess (out of domain)")


def _decision_words(result: AnalysisResult, class_names: Mapping[str, str], out_of_domain: str) -> str:
    value = result.decision.value
    if value == "out_of_domain":
        return f"AI decision: {out_of_domain}"
    if value == "indeterminate":
        return "AI decision: indeterminate"
    return f"AI decision: {class_names[value]}"


def top_two(probabilities: Mapping[str, float]) -> tuple[str, str]:
    """The two most probable classes, most probable first (ties: network order)."""
    ranked = sorted(CLASS_NAMES, key=lambda n: (-float(probabilities[n]), CLASS_NAMES.index(n)))
    return ranked[0], ranked[1]


def margin_of(result: AnalysisResult) -> float | None:
    margin = result.decision.thresholds.get("margin")
    return None if margin is None else float(margin)


def indeterminate_text(result: AnalysisResult) -> str:
    """Which classes were close, in words, and that no diagnosis is stated (the sentence
    after "AI decision: indeterminate.")."""
    probs = result.case_scores.probabilities
    first, second = top_two(probs)
    p1, p2 = 100 * float(probs[first]), 100 * float(probs[second])
    pair = f"{CLASS_SHORT[first]} {p1:.1f}% vs {CLASS_SHORT[second]} {p2:.1f}%"
    margin = margin_of(result)
    if margin is not None and (p1 - p2) <= 100 * margin + 1e-9:
        return f"{pair} are within the model's {100 * margin:g}-point margin; no diagnosis is stated."
    # Split on something else (a task threshold, the locator disagreeing): the decision
    # reason, stated next to this sentence, says what.
    return f"No diagnosis is stated; the two most probable classes are {pair}."


def out_of_domain_text(result: AnalysisResult) -> str:
    """Why the model cannot assess the study (score, threshold, failed checks) and that it
    states nothing: the sentence after "AI decision: cannot assess this study"."""
    domain = result.domain
    checks = "; ".join(r.strip().rstrip(".") for r in domain.reasons if r.strip())
    detail = f"out-of-domain score {domain.score:.2f}, threshold {OUT_OF_DOMAIN_THRESHOLD:.2f}"
    return (
        f"{CANNOT_ASSESS_TEXT} ({detail}{'; ' + checks if checks else ''}). No diagnosis is stated and no "
        f"class probabilities are reported."
    )


def threshold_text(thresholds: Mapping[str, float]) -> str:
    """'pneumonia vs no pneumonia 50%, ..., indeterminate margin 10 points' (known keys first)."""
    parts = [f"{_task_words(name)} {100 * float(thresholds[name]):g}%" for name in TASK_NAMES if name in thresholds]
    if "margin" in thresholds:
        parts.append(f"indeterminate margin {100 * float(thresholds['margin']):g} points")
    if "lesion_share_threshold" in thresholds:
        band = float(thresholds.get("lesion_band", 1.0))
        parts.append(
            f"lesion share of the lung {100 * float(thresholds['lesion_share_threshold']):.3g}%"
            + (f" (indeterminate within a factor {band:g})" if band > 1.0 else "")
        )
    if "pattern_weight" in thresholds:
        parts.append(
            f"pneumonia type from the lesion pattern at {100 * float(thresholds['pattern_weight']):g}% "
            "weight (the slice classifier the rest)"
        )
    parts += [
        f"{name} {float(value):g}" for name, value in extra_thresholds(thresholds).items() if name not in LESION_KEYS
    ]
    return ", ".join(parts)


#: Operating points of the lesion evidence, worded by threshold_text.
LESION_KEYS = ("lesion_share_threshold", "lesion_band", "pattern_weight")


def extra_thresholds(thresholds: Mapping[str, float]) -> dict[str, float]:
    """Operating points the report has no coded item for (written as algorithm parameters)."""
    return {k: float(v) for k, v in thresholds.items() if k not in TASK_NAMES and k != "margin"}


def _task_words(name: str) -> str:
    return {
        "pneumonia_vs_non_pneumonia": "pneumonia vs no pneumonia",
        "covid19_vs_cap": "COVID-19 vs CAP",
        "covid19_vs_influenza": "COVID-19 vs influenza",
    }.get(name, name)


def located_text(result: AnalysisResult, labels: Sequence[int], ranges: str) -> str:
    """The locator's slices, worded by the decision (see states_infected_slices)."""
    value = result.decision.value
    if value == "out_of_domain":
        return ""  # the locator is no more trustworthy than the classifier on such a study
    if states_infected_slices(result):
        name = upper_first(infected_name(value))
        return f"{name}: {len(labels)} (images {ranges})." if labels else f"{name}: none found."
    if not labels:
        return ""
    because = "no pneumonia is stated" if value == "non_pneumonia" else "no diagnosis is stated"
    return (
        f"The lesion locator flagged {len(labels)} slice(s) (images {ranges}); they are not reported as "
        f"infectious slices because {because}."
    )
