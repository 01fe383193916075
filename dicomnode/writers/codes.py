"""Every coded concept the result objects use, with its coding scheme, in one place.

Standard codes come first (SNOMED CT "SCT", DICOM "DCM", LOINC "LN", UCUM). Where no
standard concept exists we use the private scheme ``99COVIDNODE`` (DICOM reserves
designators that start with "99" for local schemes); docs/objects.md lists those codes
and why each one is private. Code meanings are at most 64 characters (VR LO).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

from pydicom.sr.coding import Code

from pipeline.types import CLASS_NAMES, DECISIONS, PNEUMONIA_CLASSES, TASK_NAMES

#: Designator of our private coding scheme (declared in each SR's Coding Scheme
#: Identification Sequence).
PRIVATE_SCHEME = "99COVIDNODE"
PRIVATE_SCHEME_NAME = "COVID-CT-Node private codes"
#: "2": decision codes, thresholds, out-of-domain score; NINF/PINF lost "COVID-19".
#: "3": lesion volume, lesion share and its threshold.
#: "5": the CXR branch's radiograph and fused probabilities and fused decision.
PRIVATE_SCHEME_VERSION = "5"

# --- Diagnoses (the four classes of the classifier), SNOMED CT where it exists -------
COVID19 = Code("840539006", "SCT", "COVID-19")  # Disease caused by SARS-CoV-2 (disorder)
INFLUENZA = Code("6142004", "SCT", "Influenza")
COMMUNITY_ACQUIRED_PNEUMONIA = Code("385093006", "SCT", "Community acquired pneumonia")
# The paper's "non-pneumonia" class holds healthy lungs and non-pneumonia findings;
# SNOMED CT "Normal" (17621005) would say more than the model knows, and there is no
# pre-coordinated "no pneumonia" finding, so this one is private.
NO_PNEUMONIA = Code("NOPNEU", PRIVATE_SCHEME, "No pneumonia")

#: class name (pipeline.types.CLASS_NAMES) -> diagnosis code
DIAGNOSIS: Mapping[str, Code] = MappingProxyType(
    {
        "non_pneumonia": NO_PNEUMONIA,
        "cap": COMMUNITY_ACQUIRED_PNEUMONIA,
        "influenza": INFLUENZA,
        "covid19": COVID19,
    }
)

# --- Decisions that name no class -------------------------------------------------
#: The evidence is split (pipeline.types.DECISIONS "indeterminate"): SNOMED CT
#: "Undetermined" (qualifier value, DICOM CID 230/240), a standard concept that claims
#: no diagnosis.
UNDETERMINED = Code("373068000", "SCT", "Undetermined")
#: The study differs from the training data ("out_of_domain"): no standard concept says
#: "this algorithm cannot assess this input", so this one is private.
CANNOT_ASSESS = Code("NOASSESS", PRIVATE_SCHEME, "AI cannot assess: study differs from the model's training data")

#: decision (pipeline.types.DECISIONS) -> the code of the report's Impression
DECISION: Mapping[str, Code] = MappingProxyType(
    {
        **DIAGNOSIS,
        "indeterminate": UNDETERMINED,
        "out_of_domain": CANNOT_ASSESS,
    }
)

#: class name -> measurement name of its case-level probability (no standard concept
#: "probability of <disease>" exists; DCM 111047 is "Probability of cancer" only).
CLASS_PROBABILITY: Mapping[str, Code] = MappingProxyType(
    {
        "non_pneumonia": Code("PNOPNEU", PRIVATE_SCHEME, "No pneumonia probability"),
        "cap": Code("PCAP", PRIVATE_SCHEME, "CAP probability"),
        "influenza": Code("PFLU", PRIVATE_SCHEME, "Influenza probability"),
        "covid19": Code("PCOVID", PRIVATE_SCHEME, "COVID-19 probability"),
    }
)

#: pneumonia class -> its share of the pneumonia types by the lesion pattern model
#: (pipeline.lesion_pattern): where the lesions lie and how dense they are.
PATTERN_TYPE_SHARE: Mapping[str, Code] = MappingProxyType(
    {
        "cap": Code("LPCAP", PRIVATE_SCHEME, "CAP share by lesion pattern"),
        "influenza": Code("LPFLU", PRIVATE_SCHEME, "Influenza share by lesion pattern"),
        "covid19": Code("LPCOVID", PRIVATE_SCHEME, "COVID-19 share by lesion pattern"),
    }
)

#: task name (pipeline.types.TASK_NAMES) -> measurement name of its fused score
TASK_SCORE: Mapping[str, Code] = MappingProxyType(
    {
        "pneumonia_vs_non_pneumonia": Code("TPNEU", PRIVATE_SCHEME, "Pneumonia vs no pneumonia score"),
        "covid19_vs_cap": Code("TCOVCAP", PRIVATE_SCHEME, "COVID-19 vs CAP score"),
        "covid19_vs_influenza": Code("TCOVFLU", PRIVATE_SCHEME, "COVID-19 vs influenza score"),
    }
)

#: task name -> the operating point the decision used on that task's score (model card)
DECISION_THRESHOLD: Mapping[str, Code] = MappingProxyType(
    {
        "pneumonia_vs_non_pneumonia": Code("DTPNEU", PRIVATE_SCHEME, "Pneumonia vs no pneumonia decision threshold"),
        "covid19_vs_cap": Code("DTCOVCAP", PRIVATE_SCHEME, "COVID-19 vs CAP decision threshold"),
        "covid19_vs_influenza": Code("DTCOVFLU", PRIVATE_SCHEME, "COVID-19 vs influenza decision threshold"),
    }
)
#: Scores closer than this (percentage points) are "indeterminate" (Decision.thresholds["margin"]).
INDETERMINATE_MARGIN = Code("DMARGIN", PRIVATE_SCHEME, "Indeterminate margin")
#: pipeline.types.DomainCheck.score: distance from the training data over its threshold.
OUT_OF_DOMAIN_SCORE = Code("OODSCORE", PRIVATE_SCHEME, "Out-of-domain score")
#: The lung U-Net's lesion map (3-class U-Nets): the decision's lesion evidence.
LESION_VOLUME = Code("LESVOL", PRIVATE_SCHEME, "Volume of lesions of infection")
LESION_SHARE = Code("LESPCT", PRIVATE_SCHEME, "Lesions of infection, share of lung volume")
LESION_SHARE_THRESHOLD = Code("LESTHR", PRIVATE_SCHEME, "Lesion share threshold")
#: Severity of the lesion map (pipeline.severity): ground glass and consolidation volumes
#: and the MosMedData-style grade of the whole-lung involvement (LESPCT).
GGO_VOLUME = Code("GGOVOL", PRIVATE_SCHEME, "Volume of ground-glass opacity")
CONSOLIDATION_VOLUME = Code("CONSVOL", PRIVATE_SCHEME, "Volume of consolidation")
SEVERITY_GRADE = Code("CTGRADE", PRIVATE_SCHEME, "CT severity grade (MosMedData CT-0 to CT-4)")
#: The sum of the five lobe scores (0-25) and each lobe's score (0-5) and involved share.
CT_SEVERITY_SCORE = Code("CTSS", PRIVATE_SCHEME, "CT severity score (sum of lobe scores, 0-25)")
LOBE_SCORE = Code("LOBESCORE", PRIVATE_SCHEME, "Lobe severity score (0-5)")
LOBE_INVOLVEMENT = Code("LOBEPCT", PRIVATE_SCHEME, "Lesions of infection, share of lobe volume")
SEVERITY_GRADES: tuple[Code, ...] = (
    Code("CT0", PRIVATE_SCHEME, "CT-0: no lung involvement"),
    Code("CT1", PRIVATE_SCHEME, "CT-1: under 25% of the lungs involved"),
    Code("CT2", PRIVATE_SCHEME, "CT-2: 25-50% of the lungs involved"),
    Code("CT3", PRIVATE_SCHEME, "CT-3: 50-75% of the lungs involved"),
    Code("CT4", PRIVATE_SCHEME, "CT-4: 75% of the lungs or more involved"),
)
#: Multi-stage (pipeline.stages): the decision of one study date in the trend, and the
#: fused decision over the dates; private: no standard concept names either.
STAGE_DECISION = Code("STAGEDEC", PRIVATE_SCHEME, "AI decision of this study date")
# --- The CXR branch (pipeline.cxr): the localizer read as a chest x-ray, fused with the CT
_CXR_SHORT = {"non_pneumonia": "NOPNEU", "cap": "CAP", "influenza": "FLU", "covid19": "COVID"}
_CXR_DISPLAY = {"non_pneumonia": "No pneumonia", "cap": "CAP", "influenza": "Influenza", "covid19": "COVID-19"}
#: class -> the radiograph model's probability of it
CXR_PROBABILITY: Mapping[str, Code] = MappingProxyType(
    {c: Code(f"XP{_CXR_SHORT[c]}", PRIVATE_SCHEME, f"{_CXR_DISPLAY[c]} probability by radiograph") for c in CLASS_NAMES}
)
#: class -> the CT's and the radiograph's fused probability of it
FUSED_PROBABILITY: Mapping[str, Code] = MappingProxyType(
    {
        c: Code(f"FP{_CXR_SHORT[c]}", PRIVATE_SCHEME, f"{_CXR_DISPLAY[c]} probability, CT and radiograph")
        for c in CLASS_NAMES
    }
)
CXR_FUSED_DECISION = Code("FUSDEC", PRIVATE_SCHEME, "AI decision of CT and radiograph fused")
MULTI_STAGE_DECISION = Code("MSDEC", PRIVATE_SCHEME, "AI multi-stage decision")
#: The score above which a study is out of domain: 1 by construction of the score.
OUT_OF_DOMAIN_THRESHOLD = Code("OODTHR", PRIVATE_SCHEME, "Out-of-domain threshold")
#: Concept name of the text item that says why the decision is what it is (Decision.reason).
DECISION_REASON = Code("DREASON", PRIVATE_SCHEME, "AI decision reason")

#: Locator output of one slice (METHOD.md: infectious slice locating). The locator finds
#: lesion-bearing slices of any pneumonia class, so the meanings name no class; the
#: report's Impression says which pneumonia they belong to.
INFECTED_SLICE_SCORE = Code("PINF", PRIVATE_SCHEME, "Infectious slice score")
INFECTED_SLICE_COUNT = Code("NINF", PRIVATE_SCHEME, "Infectious slices")
#: The same count where the decision states no pneumonia (no pneumonia, indeterminate):
#: another concept, so that no reader takes these slices for a finding.
LOCATOR_FLAGGED_COUNT = Code("NFLAG", PRIVATE_SCHEME, "Slices flagged by lesion locator, not a finding")
#: What an image region of the report outlines.
ATTENTION_REGION = Code("ATTN", PRIVATE_SCHEME, "Grad-CAM attention region")
#: Concept name of the disclaimer text item (no standard concept).
DISCLAIMER = Code("DISCL", PRIVATE_SCHEME, "Disclaimer")

# --- Standard concepts -----------------------------------------------------------
LUNG = Code("39607008", "SCT", "Lung")
ANATOMICAL_STRUCTURE = Code("91723000", "SCT", "Anatomical Structure")
#: SEG segment of the lesions (CID 7150 category, CID 7151-style property).
MORPHOLOGICALLY_ALTERED_STRUCTURE = Code("49755003", "SCT", "Morphologically Altered Structure")
LESION = Code("52988006", "SCT", "Lesion")
#: The lesion map split by density (pipeline.severity's consolidation threshold).
GROUND_GLASS_OPACITY = Code("112120", "DCM", "Ground glass opacity")
LUNG_CONSOLIDATION = Code("95436008", "SCT", "Lung consolidation")
#: Lobes (CID 6170 Lobe of Lung): the paired upper and lower lobes take a laterality
#: modifier (CID 244); the middle lobe is the right lung's only.
UPPER_LOBE_OF_LUNG = Code("45653009", "SCT", "Upper lobe of lung")
MIDDLE_LOBE_OF_RIGHT_LUNG = Code("72481006", "SCT", "Middle lobe of right lung")
LOWER_LOBE_OF_LUNG = Code("90572001", "SCT", "Lower lobe of lung")
RIGHT = Code("24028007", "SCT", "Right")
LEFT = Code("7771000", "SCT", "Left")
#: Each lobe of pipeline.severity.LOBES: its type and laterality modifier (None: unpaired).
LOBE_TYPES: Mapping[str, tuple[Code, Code | None]] = MappingProxyType(
    {
        "right_upper": (UPPER_LOBE_OF_LUNG, RIGHT),
        "right_middle": (MIDDLE_LOBE_OF_RIGHT_LUNG, None),
        "right_lower": (LOWER_LOBE_OF_LUNG, RIGHT),
        "left_upper": (UPPER_LOBE_OF_LUNG, LEFT),
        "left_lower": (LOWER_LOBE_OF_LUNG, LEFT),
    }
)
VOLUME = Code("118565006", "SCT", "Volume")
#: Concept name of the coded diagnosis. Not "Finding" (121071): TID 1410 uses that
#: name for the finding type of a measurement group.
IMPRESSION = Code("121073", "DCM", "Impression")
SUMMARY = Code("121111", "DCM", "Summary")
#: TID 1500 row 12: the container of case-level qualitative evaluations.
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
#: Procedure reported: TID 1500 takes it from CID 100, whose CT entry is LOINC "CT
#: unspecified body region". "CT Chest" (24627-2) is the more specific Playbook term, but it is
#: not in CID 100 and PixelMed's TID 1500 validator rejects it; the region is in every
#: measurement group's Finding Site (lung).
CT_PROCEDURE = Code("25045-6", "LN", "CT unspecified body region")
OF_INTEREST = Code("113000", "DCM", "Of Interest")
SOURCE_IMAGE_FOR_PROCESSING = Code("121322", "DCM", "Source image for image processing operation")
ARTIFICIAL_INTELLIGENCE = Code("123110", "DCM", "Artificial Intelligence")
#: Algorithm family of the classical lung segmentation (HU threshold, then morphology).
MORPHOLOGICAL_OPERATIONS = Code("123104", "DCM", "Morphological Operations")
#: Purpose of Reference of the Contributing Equipment item that names the AI model (CID
#: 7005). IHE AI Results asks for "Processing Algorithm", a code it has only as a 99IHE
#: placeholder; DICOM's own "Processing Equipment" is the standard code closest to it.
PROCESSING_EQUIPMENT = Code("109102", "DCM", "Processing Equipment")

# --- Units (UCUM) -------------------------------------------------------------------
#: Probabilities and scores are reported in percent: viewers print value and unit
#: code side by side, and "87.3 %" reads better than "0.873 1".
PERCENT = Code("%", "UCUM", "percent")
MILLILITER = Code("ml", "UCUM", "milliliter")
#: A count of slices: UCUM unity with an annotation.
SLICES = Code("{slices}", "UCUM", "slices")
#: Severity scores: UCUM unity with an annotation.
SCORE_POINTS = Code("{score}", "UCUM", "score")
#: The out-of-domain score and its threshold: a dimensionless ratio (DICOM CID 7181).
RATIO = Code("{ratio}", "UCUM", "ratio")


def _check_tables() -> None:
    # Fails at import, not in a report, if pipeline.types grows a class or task.
    if tuple(DIAGNOSIS) != CLASS_NAMES or tuple(CLASS_PROBABILITY) != CLASS_NAMES:
        raise RuntimeError(f"dicomnode.writers.codes: class codes do not cover {CLASS_NAMES}")
    if tuple(DECISION) != DECISIONS:
        raise RuntimeError(f"dicomnode.writers.codes: decision codes do not cover {DECISIONS}")
    if tuple(PATTERN_TYPE_SHARE) != PNEUMONIA_CLASSES:
        raise RuntimeError(f"dicomnode.writers.codes: lesion pattern codes do not cover {PNEUMONIA_CLASSES}")
    if tuple(TASK_SCORE) != TASK_NAMES or tuple(DECISION_THRESHOLD) != TASK_NAMES:
        raise RuntimeError(f"dicomnode.writers.codes: task codes do not cover {TASK_NAMES}")


_check_tables()


def decision_of_code(value: str, scheme: str) -> str | None:
    """The decision (one of DECISIONS) whose Impression code is (value, scheme), or None."""
    for name, code in DECISION.items():
        if code.value == value and code.scheme_designator == scheme:
            return name
    return None
