"""Per-slice training tensors built once per run from a data set's cases.

Each role learns from slices prepared by ``pipeline.preprocess``, the very functions the
inference chain uses, so training and inference see the same inputs:

- classifier: every lung slice of a scan (more lung than ``min_lung_pixels``). Labels
  (``TrainParams.slice_labels``): "lesion" (default) gives a slice of a pneumonia scan
  its scan's class only when it holds more than ``locator_lesion_pixels`` lesion
  pixels, and non-pneumonia otherwise (a lesion-free slice of a CAP scan looks like
  healthy lung, and calling it CAP teaches the network that healthy lung is CAP);
  scans without a lesion mask fall back to "case" (the paper's weak labels: every slice
  takes the scan's label);
- locator: lung slices of every scan, labelled infected (1) when the slice has more than
  ``locator_lesion_pixels`` lesion pixels (non-pneumonia scans: all 0), so it learns
  what healthy slices look like too (trained on COVID-19 scans only, it flagged most
  slices of healthy CTs from other generators);
- classifier and locator store the slice as the pair [HU, soft lung mask] cropped to
  the lung box (``pair_batch``); the loop augments it in HU and makes the network input
  with ``lung_channels``, exactly as ``classifier_batch`` does at inference;
- segmentation: (``unet_batch`` HU slice, lung mask) pairs at the U-Net's input size; the
  lesion pixels of the lung are marked ``SEG_LESION`` (lung too) so the loss can weigh them.

The lung mask is the case's own when the data set has one, else the classical
HU-threshold segmentation (what the chain does without U-Net weights).

Decoding or generating a volume is the slow part, so cases are prepared in parallel
worker processes (``workers``) and the result is kept in memory as float16.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..nets import UNET_LESION
from ..params import ChainParams
from ..preprocess import lung_slice_indices, pair_batch, resize_batch, sample_slices, unet_batch
from ..types import CLASS_NAMES, CTVolume
from .checkpoint import TrainError
from .params import TrainParams

ROLES = ("segmentation", "classifier", "locator")
COVID_LABEL = CLASS_NAMES.index("covid19")
NON_PNEUMONIA_LABEL = CLASS_NAMES.index("non_pneumonia")
#: Segmentation targets: 0 background, 1 lung, SEG_LESION lung with a lesion of infection.
SEG_LESION = UNET_LESION


@dataclass(frozen=True)
class SliceRecipe:
    """What to extract from each case (picklable: it travels to worker processes)."""

    role: str
    chain: ChainParams
    train: TrainParams
    max_slices_per_case: int | None  # None: every eligible slice
    #: Lung masks of the classifier/locator inputs: "dataset" (the data set's own, else
    #: classical), "classical", or "unet" (``unet`` below: what the chain will compute).
    lung_masks: str = "dataset"
    unet: torch.nn.Module | None = None


@dataclass(frozen=True)
class CaseSlices:
    """One case's prepared slices: inputs (n, c, s, s) float16, targets, z indices."""

    case_id: str
    inputs: np.ndarray
    targets: np.ndarray
    z_indices: np.ndarray
    lung_mask_source: str  # "dataset", "classical" or "unet"


@dataclass(frozen=True)
class SliceSet:
    """All prepared slices of a cohort, with the case each came from."""

    inputs: torch.Tensor  # (n, c, s, s) float16: [HU, mask] pairs, or U-Net inputs
    targets: torch.Tensor  # (n,) int64 labels, or (n, s, s) uint8 masks
    case_index: np.ndarray  # (n,) index into case_ids
    case_ids: tuple[str, ...]
    case_labels: np.ndarray  # (n_cases,) class index of each case

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def slice_labels(self) -> np.ndarray:
        """Per-slice class labels (classifier/locator); for sampling and metrics."""
        return self.targets.numpy()


def recipe_for(
    role: str,
    arch: dict[str, Any],
    chain: ChainParams,
    train: TrainParams,
    max_slices_per_case: int | None,
    lung_masks: str = "dataset",
    unet: torch.nn.Module | None = None,
    unet_arch: dict[str, Any] | None = None,
) -> SliceRecipe:
    """The recipe of a role; the networks' input sizes override the chain defaults."""
    if role not in ROLES:
        raise TrainError(f"unknown model role {role!r}; expected one of {ROLES}")
    if lung_masks not in ("dataset", "classical", "unet"):
        raise TrainError(f"lung mask source {lung_masks!r} is not dataset, classical or unet")
    if lung_masks == "unet" and unet is None:
        raise TrainError("lung masks from the U-Net need the U-Net")
    size = int(arch.get("input_size", chain.unet_input_size if role == "segmentation" else chain.input_size))
    chain = replace(chain, unet_input_size=size) if role == "segmentation" else replace(chain, input_size=size)
    if unet_arch is not None and "input_size" in unet_arch:
        chain = replace(chain, unet_input_size=int(unet_arch["input_size"]))
    return SliceRecipe(
        role=role,
        chain=chain,
        train=train,
        max_slices_per_case=max_slices_per_case,
        lung_masks=lung_masks,
        unet=unet.eval() if unet is not None else None,
    )


def case_label_index(label: str) -> int:
    if label not in CLASS_NAMES:
        raise TrainError(f"case label {label!r} is not one of {CLASS_NAMES}")
    return CLASS_NAMES.index(label)


@dataclass(frozen=True)
class LoadedCase:
    """What a case's ``load()`` gave: the volume and the masks it has (or None)."""

    volume: CTVolume
    lung_mask: np.ndarray | None
    lesion_mask: np.ndarray | None


def loaded_parts(loaded: Any) -> LoadedCase:
    """Normalise ``Case.load()``'s answer (an object with ``volume``/``lung_mask``/
    ``lesion_mask`` attributes, or a (volume, lung_mask, lesion_mask) tuple)."""
    if isinstance(loaded, tuple):
        parts = list(loaded) + [None, None]
        volume, lung, lesion = parts[0], parts[1], parts[2]
    else:
        volume = getattr(loaded, "volume", loaded)
        lung, lesion = getattr(loaded, "lung_mask", None), getattr(loaded, "lesion_mask", None)
    if not isinstance(volume, CTVolume):
        raise TrainError(f"a case loaded as {type(volume).__name__}, not a CTVolume")
    for name, m in (("lung", lung), ("lesion", lesion)):
        if m is not None and np.shape(m) != volume.hu.shape:
            raise TrainError(f"{name} mask has shape {np.shape(m)} but the volume {volume.hu.shape}")
    return LoadedCase(
        volume,
        None if lung is None else np.asarray(lung, dtype=bool),
        None if lesion is None else np.asarray(lesion, dtype=bool),
    )


def _lung_mask(loaded: LoadedCase, recipe: SliceRecipe) -> tuple[np.ndarray, str]:
    """The lung mask the classifier/locator input is cut with.

    Training with the masks the chain will compute matters: a U-Net or threshold mask
    leaves dense consolidation out of the lung, a drawn mask keeps it in, and a
    classifier trained on one and run on the other misreads consolidation.
    """
    if recipe.lung_masks == "dataset" and loaded.lung_mask is not None:
        return loaded.lung_mask, "dataset"
    from ..lung import segment_lungs  # imported late: only needed without masks

    unet = recipe.unet if recipe.lung_masks == "unet" else None
    return segment_lungs(loaded.volume, recipe.chain, unet=unet).mask, "unet" if unet is not None else "classical"


def _limit(z: np.ndarray, limit: int | None) -> np.ndarray:
    return z if limit is None else sample_slices(z, limit)


def segmentation_slices(
    n_slices: int, lesion: np.ndarray | None, limit: int | None, lesion_share: float, min_pixels: int
) -> np.ndarray:
    """The slices a case gives the U-Net: all of them without ``limit``; else about
    ``lesion_share`` of ``limit`` evenly among the slices with more than ``min_pixels``
    lesion pixels and the rest evenly over the whole scan (sorted, unique)."""
    every = np.arange(n_slices, dtype=np.int64)
    if limit is None or n_slices <= limit:
        return every
    with_lesion = (
        np.zeros(0, dtype=np.int64)
        if lesion is None
        else np.flatnonzero(np.count_nonzero(lesion.reshape(n_slices, -1), axis=1) > min_pixels)
    )
    n_lesion = min(len(with_lesion), int(round(limit * float(lesion_share))))
    chosen = sample_slices(every, limit - n_lesion) if limit - n_lesion > 0 else np.zeros(0, dtype=np.int64)
    if n_lesion:
        rest = np.setdiff1d(with_lesion, chosen)
        if len(rest):
            chosen = np.union1d(chosen, sample_slices(rest, n_lesion))
    return chosen


def prepare_case(case: Any, recipe: SliceRecipe) -> CaseSlices:
    """Load one case and extract the slices its role trains on."""
    case_id = str(case.case_id)
    try:
        loaded = loaded_parts(case.load())
    except TrainError as e:
        raise TrainError(f"case {case_id}: {e}") from e
    except Exception as e:  # a reader may raise anything for a damaged file
        raise TrainError(f"case {case_id}: cannot be loaded: {e}") from e
    hu = loaded.volume.hu
    chain = recipe.chain
    label = case_label_index(str(case.label))
    if recipe.role == "segmentation":
        mask = loaded.lung_mask
        if mask is None:
            raise TrainError(
                f"case {case_id} has no lung mask: segmentation training needs lung masks "
                f"(phantoms have them; give a lung_mask column in a manifest CSV)"
            )
        z = segmentation_slices(
            hu.shape[0],
            loaded.lesion_mask,
            recipe.max_slices_per_case,
            recipe.train.seg_lesion_slice_share,
            recipe.train.locator_lesion_pixels,
        )
        x = unet_batch(hu[z], chain)
        y = (resize_batch(mask[z].astype(np.float32), chain.unet_input_size) > 0.5).astype(np.uint8)
        if loaded.lesion_mask is not None:
            # Lesion pixels of the lung are marked 2 (still lung): the loss weighs them more,
            # because dense consolidation looks like the heart or chest wall and a U-Net that
            # leaves it out hides exactly the disease from the lung-only classifier.
            lesion = resize_batch(loaded.lesion_mask[z].astype(np.float32), chain.unet_input_size) > 0.5
            y[lesion & (y > 0)] = SEG_LESION
        return CaseSlices(case_id, x.astype(np.float16), y, z, "dataset")
    mask, source = _lung_mask(loaded, recipe)
    z = _limit(lung_slice_indices(mask, chain), recipe.max_slices_per_case)
    lesion_mask = loaded.lesion_mask
    if lesion_mask is not None:
        with_lesion = (
            np.count_nonzero(lesion_mask.reshape(lesion_mask.shape[0], -1), axis=1)[z]
            > recipe.train.locator_lesion_pixels
        )
    elif label == NON_PNEUMONIA_LABEL:
        with_lesion = np.zeros(len(z), dtype=bool)  # a scan without pneumonia has no lesion of infection
    else:
        with_lesion = None
    if recipe.role == "locator":
        if with_lesion is None:
            raise TrainError(
                f"case {case_id} ({CLASS_NAMES[label]}) has no lesion mask: locator training "
                f"labels slices from lesion masks (phantoms have them; give a lesion_mask column "
                f"in a manifest CSV)"
            )
        y = with_lesion.astype(np.int64)
    elif recipe.train.slice_labels == "lesion" and with_lesion is not None:
        y = np.where(with_lesion, label, NON_PNEUMONIA_LABEL).astype(np.int64)
    else:
        y = np.full(len(z), label, dtype=np.int64)
    x = (
        pair_batch(hu, mask, z, chain.input_size)
        if len(z)
        else np.zeros((0, 2, chain.input_size, chain.input_size), np.float32)
    )
    return CaseSlices(case_id, x.astype(np.float16), y, z, source)


def _worker_init() -> None:
    # One thread per worker process: the processes already use the cores.
    torch.set_num_threads(1)


def prepare_cases(
    cases: Sequence[Any], recipe: SliceRecipe, workers: int = 0, progress: Callable[[int], None] | None = None
) -> list[CaseSlices]:
    """``prepare_case`` for every case, in order; ``workers`` > 0 uses that many processes."""
    if workers <= 0 or len(cases) < 2:
        out = []
        for case in cases:
            out.append(prepare_case(case, recipe))
            if progress:
                progress(1)
        return out
    # spawn, not fork: forking a process that already runs torch threads can deadlock.
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init) as pool:
        futures = [pool.submit(prepare_case, case, recipe) for case in cases]
        out = []
        try:
            for fut in futures:
                out.append(fut.result())
                if progress:
                    progress(1)
        except cf.process.BrokenProcessPool as e:
            raise TrainError(
                f"a case-preparing worker process died ({e}); out of memory? "
                f"retry with fewer --workers (0 prepares cases in this process)"
            ) from e
        return out


def stack_slices(prepared: Sequence[CaseSlices], case_labels: Sequence[int]) -> SliceSet:
    """Concatenate the prepared cases into one SliceSet (empty cases contribute nothing)."""
    kept = [p for p in prepared if len(p.targets)]
    if not kept:
        raise TrainError("no training slices: no case has a slice with enough lung (check the data, or the lung masks)")
    inputs = torch.from_numpy(np.concatenate([p.inputs for p in kept]))
    targets = torch.from_numpy(np.concatenate([p.targets for p in kept]))
    index = np.concatenate(
        [np.full(len(p.targets), i, dtype=np.int64) for i, p in enumerate(prepared) if len(p.targets)]
    )
    return SliceSet(
        inputs=inputs,
        targets=targets,
        case_index=index,
        case_ids=tuple(p.case_id for p in prepared),
        case_labels=np.asarray(case_labels, dtype=np.int64),
    )
