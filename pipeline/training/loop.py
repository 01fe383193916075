"""The training run of one role: data, epochs, validation, checkpoints, the bundle.

``train_role(settings)`` is the whole run; ``dicomnode train`` only parses its command
line into a ``TrainSettings``. Reproducibility on the CPU: deterministic algorithms, the
network initialised from the seed, and every epoch's sample order and augmentation drawn
from generators seeded by (seed, role, epoch), so that ``--resume`` after epoch N ends
with the same weights as a run that was never interrupted.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..device import resolve_device
from ..nets import UNET_LESION, UNET_LUNG, build_network, unet_has_lesion_head
from ..params import ChainParams
from ..preprocess import lung_channels
from .augment import augment_lung_pairs, augment_pairs, augment_unet_inputs, random_erase
from .bundle import update_bundle
from .checkpoint import (
    CosineSchedule,
    TrainError,
    checkpoint_path,
    load_checkpoint,
    restore_rng_states,
    save_checkpoint,
)
from .data import ROLES, SEG_LESION, SliceSet, case_label_index, prepare_cases, recipe_for, stack_slices
from .paint import paint_consolidation
from .params import TrainParams
from .sampling import balanced_order, batches, derived_seed, generator_for, shuffled_order
from .validation import MONITOR, classifier_metrics, dice, locator_metrics, segmentation_metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSettings:
    """Everything one training run depends on (the CLI builds it from its arguments)."""

    role: str
    data_specs: tuple[str, ...]  # one or more data sets, trained on together
    out_dir: Path
    architecture: dict[str, Any]
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    device: str = "auto"
    seed: int = 0
    resume: bool = False
    val_fraction: float = 0.2
    workers: int = 0
    threads: int | None = None  # torch intra-op threads; None: torch's default
    max_slices_per_case: int | None = None
    #: Lung masks for classifier/locator inputs: "chain" (what inference computes: the
    #: bundle folder's U-Net when it has one, else classical), "dataset", "classical".
    lung_masks: str = "chain"
    command: str = ""
    name: str | None = None
    version: str | None = None
    description: str | None = None
    progress: bool | None = None  # None: bars only on a terminal
    chain: ChainParams = field(default_factory=ChainParams)
    train: TrainParams = field(default_factory=TrainParams)

    def __post_init__(self) -> None:
        problems = []
        if not self.data_specs or any(not isinstance(d, str) or not d.strip() for d in self.data_specs):
            problems.append(f"--data needs at least one non-empty spec, got {self.data_specs!r}")
        if self.role not in ROLES:
            problems.append(f"role {self.role!r} is not one of {ROLES}")
        if self.epochs < 1:
            problems.append(f"--epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 2:
            problems.append(f"--batch-size must be at least 2 (BatchNorm), got {self.batch_size}")
        if not self.lr > 0:
            problems.append(f"--lr must be positive, got {self.lr}")
        if not 0.0 <= self.val_fraction < 1.0:
            problems.append(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if self.threads is not None and self.threads < 1:
            problems.append(f"--threads must be at least 1, got {self.threads}")
        if self.workers < 0:
            problems.append(f"--workers must be 0 or more, got {self.workers}")
        if self.max_slices_per_case is not None and self.max_slices_per_case < 1:
            problems.append(f"--max-slices-per-case must be at least 1, got {self.max_slices_per_case}")
        if self.lung_masks not in ("chain", "dataset", "classical"):
            problems.append(f"--lung-masks must be chain, dataset or classical, got {self.lung_masks!r}")
        if problems:
            raise TrainError("; ".join(problems))

    def fingerprint(self) -> dict[str, Any]:
        """The settings a resumed run must share with the checkpoint (not epochs:
        a finished run may be extended)."""
        fp = {
            "role": self.role,
            "data_specs": list(self.data_specs),
            "architecture": self.architecture,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "max_slices_per_case": self.max_slices_per_case,
            "lung_masks": self.lung_masks,
            "train_params": asdict(self.train),
            "chain_params": asdict(self.chain),
        }
        return json.loads(json.dumps(fp))  # tuples -> lists, as they come back from a file


@dataclass(frozen=True)
class TrainOutcome:
    """What a run produced: the bundle folder and the last epoch's validation figures."""

    bundle_dir: Path
    role: str
    epochs_done: int
    validation: dict[str, float | None]
    history: list[dict[str, Any]]


@contextmanager
def _torch_state(threads: int | None) -> Iterator[None]:
    """Deterministic algorithms and the thread count for the run, restored afterwards
    (both are global torch state). On a busy machine one thread is often faster than
    several that wait on each other."""
    before = torch.are_deterministic_algorithms_enabled()
    threads_before = torch.get_num_threads()
    torch.use_deterministic_algorithms(True, warn_only=True)
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)
        torch.set_num_threads(threads_before)


def _json_float(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), 6)


def _open_cases(specs: Sequence[str]) -> tuple[list[Any], list[Any]]:
    """Open every data set; their cases are trained on together (ids must not repeat)."""
    from ..datasets import open_dataset  # the data set readers (phantom, CSV, MosMedData, CC-CCII)

    datasets = [open_dataset(spec) for spec in specs]
    cases = [c for d in datasets for c in getattr(d, "cases", d)]
    ids = [str(c.case_id) for c in cases]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise TrainError(
            f"the data sets {list(specs)} share case ids {dup}: give each --data other "
            f"cases (for phantoms: other seeds)"
        )
    return datasets, cases


def _describe(dataset: Any, spec: str) -> Any:
    described = dataset.describe() if hasattr(dataset, "describe") else {"spec": spec}
    return json.loads(json.dumps(described, default=str))


def _is_synthetic(dataset: Any, spec: str, described: Any) -> bool:
    flag = getattr(dataset, "synthetic", None)
    if flag is None and isinstance(described, dict):
        flag = described.get("synthetic")
    if flag is None:
        flag = spec.strip().lower().startswith("phantom")
    return bool(flag)


def _bundle_unet(bundle_dir: Path) -> tuple[torch.nn.Module, dict[str, Any], str] | None:
    """The segmentation network already in the bundle folder (checked), or None."""
    from ..models import sha256_file
    from .bundle import read_existing_card

    entry = read_existing_card(bundle_dir).get("models", {}).get("segmentation")
    if not entry:
        return None
    path = Path(bundle_dir) / str(entry.get("file", "segmentation.pt"))
    sha = sha256_file(path) if path.is_file() else None
    if sha is None or sha != entry.get("sha256"):
        raise TrainError(
            f"{path} is missing or does not match its card entry; retrain segmentation or use --lung-masks classical"
        )
    net = build_network(entry["architecture"])
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return net.eval(), dict(entry["architecture"]), sha


def _split(cases: list[Any], val_fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    if val_fraction <= 0:
        return cases, []
    from ..datasets import patient_split

    train, val = patient_split(cases, val_fraction, seed=seed)
    train, val = list(train), list(val)
    overlap = {str(c.patient_id) for c in train} & {str(c.patient_id) for c in val}
    if overlap:  # would leak a patient into validation: refuse rather than report inflated figures
        raise TrainError(f"patient split put {len(overlap)} patient(s) in both cohorts")
    return train, val


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(dev)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


class _Run:
    """State of one run; methods are the steps of ``train_role``."""

    def __init__(self, s: TrainSettings) -> None:
        self.s = s
        self.out = Path(s.out_dir)
        self.device = resolve_device(s.device)
        self.show = s.progress
        self.mask_unet_sha256: str | None = None
        self.recipe = self._recipe()
        # The U-Net that cut the inputs is part of what a resumed run must share.
        self.fingerprint = {**s.fingerprint(), "lung_mask_unet_sha256": self.mask_unet_sha256}
        self.log_path = self.out / f"train_{s.role}.jsonl"
        self.ckpt = checkpoint_path(self.out, s.role)
        self._sources: set[str] = set()

    def _recipe(self):
        s = self.s
        if s.role == "segmentation" or s.lung_masks != "chain":
            mode = "dataset" if s.role == "segmentation" else s.lung_masks
            return recipe_for(s.role, s.architecture, s.chain, s.train, s.max_slices_per_case, mode)
        unet = _bundle_unet(self.out)
        if unet is None:
            log.info(
                "%s: no segmentation model in %s yet: inputs use the classical lung masks, as the "
                "chain will without one",
                s.role,
                self.out,
            )
            return recipe_for(s.role, s.architecture, s.chain, s.train, s.max_slices_per_case, "classical")
        net, arch, self.mask_unet_sha256 = unet
        log.info(
            "%s: inputs use the lung masks of the bundle's U-Net (sha256 %s...)", s.role, self.mask_unet_sha256[:12]
        )
        return recipe_for(
            s.role, s.architecture, s.chain, s.train, s.max_slices_per_case, "unet", unet=net, unet_arch=arch
        )

    # ---------------------------------------------------------------- data
    def load_data(self) -> None:
        s = self.s
        datasets, cases = _open_cases(s.data_specs)
        self.described = [_describe(d, spec) for d, spec in zip(datasets, s.data_specs, strict=True)]
        self.synthetic = any(
            _is_synthetic(d, spec, desc) for d, spec, desc in zip(datasets, s.data_specs, self.described, strict=True)
        )
        if not cases:
            raise TrainError(f"data {list(s.data_specs)} holds no cases")
        for case in cases:
            case_label_index(str(case.label))
        if s.role == "locator" and not any(case_label_index(str(c.label)) != 0 for c in cases):
            raise TrainError(
                f"data {list(s.data_specs)} has no pneumonia case: the locator learns "
                f"infectious slices from the lesion masks of pneumonia scans"
            )
        train_cases, val_cases = _split(cases, s.val_fraction, s.seed)
        self.n_cases = (len(train_cases), len(val_cases))
        self.train_set = self._prepare(train_cases, "train")
        self.val_set = self._prepare(val_cases, "validation") if val_cases else None
        self.mask_sources = sorted(self._sources)
        if not val_cases:
            log.warning(
                "%s: the validation cohort is empty (%d cases, --val-fraction %s): no validation "
                "figures will be recorded",
                s.role,
                len(cases),
                s.val_fraction,
            )
        log.info(
            "%s: %d training slices from %d cases, %d validation slices from %d cases",
            s.role,
            len(self.train_set),
            len(train_cases),
            len(self.val_set) if self.val_set else 0,
            len(val_cases),
        )

    def _prepare(self, cases: Sequence[Any], what: str) -> SliceSet:
        with tqdm(
            total=len(cases),
            desc=f"{self.s.role}: preparing {what} cases",
            unit="case",
            disable=self._hide(),
            leave=False,
        ) as bar:
            prepared = prepare_cases(cases, self.recipe, self.s.workers, progress=bar.update)
        self._sources |= {p.lung_mask_source for p in prepared}
        labels = [case_label_index(str(c.label)) for c in cases]
        return stack_slices(prepared, labels)

    def _hide(self) -> bool | None:
        return None if self.show is None else not self.show

    # ---------------------------------------------------------------- model
    def build(self) -> None:
        s = self.s
        torch.manual_seed(derived_seed(s.seed, s.role, "init"))
        self.model = build_network(s.architecture).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=s.lr, weight_decay=s.train.weight_decay)
        self.schedule = CosineSchedule(s.lr, s.epochs, s.train.min_lr_fraction)
        self.start_epoch = 0
        self.history: list[dict[str, Any]] = []
        self.elapsed_before = 0.0
        if s.resume:
            state = load_checkpoint(self.ckpt, s.role, self.fingerprint)
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            restore_rng_states(state["rng"])
            self.start_epoch = int(state["epoch"])
            self.history = list(state["history"])
            self.elapsed_before = float(state.get("elapsed_s", 0.0))
            log.info("%s: resuming after epoch %d from %s", s.role, self.start_epoch, self.ckpt)
        elif self.ckpt.exists():
            log.warning("%s: a checkpoint exists at %s; starting over (use --resume to continue it)", s.role, self.ckpt)

    # ---------------------------------------------------------------- epochs
    def _order(self, epoch: int) -> np.ndarray:
        g = generator_for(self.s.seed, self.s.role, epoch, "order")
        if self.s.role == "segmentation":
            return shuffled_order(len(self.train_set), g)
        return balanced_order(self.train_set.slice_labels, len(self.train_set), g)

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        if self.s.role == "segmentation":
            return segmentation_loss(logits, y, self.s.train.lesion_weight)
        return F.cross_entropy(logits, y)

    def train_epoch(self, epoch: int) -> float:
        s = self.s
        self.model.train()
        torch.manual_seed(derived_seed(s.seed, s.role, epoch, "torch"))
        aug = generator_for(s.seed, s.role, epoch, "augment")
        total, count = 0.0, 0
        with tqdm(
            batches(self._order(epoch), s.batch_size),
            desc=f"{s.role} epoch {epoch + 1}/{s.epochs}",
            unit="batch",
            disable=self._hide(),
            leave=False,
        ) as bar:
            for idx in bar:
                idx_t = torch.from_numpy(idx)
                x = self.train_set.inputs[idx_t].float()
                y = self.train_set.targets[idx_t]
                if s.role == "segmentation":
                    x, y = augment_pairs(x, y, s.train.augment, aug)
                    hu_range = (s.chain.hu_clip_min, s.chain.hu_window[1])
                    x, y = paint_consolidation(x, y, s.train.augment, aug, hu_range, SEG_LESION)
                    if s.train.intensity_augmentation:
                        x = augment_unet_inputs(x, s.train.augment, aug, hu_range)
                else:
                    x = augment_lung_pairs(
                        x, s.train.augment, aug, s.chain.hu_window, intensity=s.train.intensity_augmentation
                    )
                    x = random_erase(lung_channels(x, self.recipe.chain), s.train.augment, aug)
                self.optimizer.zero_grad(set_to_none=True)
                loss = self._loss(x.to(self.device), y.to(self.device))
                loss.backward()
                self.optimizer.step()
                total += float(loss.detach()) * len(idx)
                count += len(idx)
                bar.set_postfix(loss=f"{total / count:.4f}")
        return total / max(count, 1)

    @torch.inference_mode()
    def validate(self) -> dict[str, float]:
        vs = self.val_set
        if vs is None or len(vs) == 0:
            return {}
        self.model.eval()
        step = max(2, self.s.batch_size * 2)
        outs, loss_sum = [], 0.0
        for start in range(0, len(vs), step):
            x = vs.inputs[start : start + step].float()
            if self.s.role != "segmentation":
                x = lung_channels(x, self.recipe.chain)
            x = x.to(self.device)
            y = vs.targets[start : start + step].to(self.device)
            logits = self.model(x)
            # Mean over the batch's samples (and pixels, for the U-Net), weighted by samples.
            if self.s.role == "segmentation":
                loss_sum += float(segmentation_loss(logits.float(), y, self.s.train.lesion_weight)) * len(x)
            else:
                loss_sum += float(F.cross_entropy(logits.float(), y.long())) * len(x)
            outs.append(F.softmax(logits.float(), dim=1).cpu())
        prob = torch.cat(outs).numpy()
        out = {"val_loss": loss_sum / len(vs)}
        if self.s.role == "classifier":
            out.update(classifier_metrics(vs.slice_labels, prob, vs.case_index, vs.case_labels, self.s.chain.top_k))
        elif self.s.role == "locator":
            out.update(locator_metrics(vs.slice_labels, prob))
        else:
            truth = vs.targets.numpy()
            lung_prob = prob[:, UNET_LUNG:].sum(axis=1)
            out.update(segmentation_metrics(lung_prob > self.s.train.dice_threshold, truth > 0))
            if prob.shape[1] > UNET_LESION:
                out["val_lesion_dice"] = dice(prob[:, UNET_LESION] > self.s.train.dice_threshold, truth == SEG_LESION)
        return out

    def run_epochs(self) -> None:
        s = self.s
        if not s.resume:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self.log_path.write_text("")
        self.t0 = time.monotonic()
        monitor = MONITOR[s.role]
        with tqdm(
            range(self.start_epoch, s.epochs),
            desc=f"{s.role}",
            unit="epoch",
            initial=self.start_epoch,
            total=s.epochs,
            disable=self._hide(),
        ) as bar:
            for epoch in bar:
                t_epoch = time.monotonic()
                lr = self.schedule.apply(self.optimizer, epoch)
                train_loss = self.train_epoch(epoch)
                val = self.validate()
                record = {
                    "role": s.role,
                    "epoch": epoch + 1,
                    "epochs": s.epochs,
                    "lr": lr,
                    "train_loss": _json_float(train_loss),
                    **{k: _json_float(v) for k, v in val.items()},
                    "epoch_time_s": round(time.monotonic() - t_epoch, 2),
                    "train_slices": len(self.train_set),
                    "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                }
                self.history.append(record)
                with open(self.log_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
                save_checkpoint(
                    self.ckpt,
                    role=s.role,
                    fingerprint=self.fingerprint,
                    epoch=epoch + 1,
                    model=self.model,
                    optimizer=self.optimizer,
                    schedule=self.schedule,
                    history=self.history,
                    elapsed_s=self.elapsed(),
                )
                shown = record.get(monitor)
                bar.set_postfix(loss=f"{train_loss:.4f}", **{monitor: "n/a" if shown is None else f"{shown:.4f}"})
                log.info(
                    "%s epoch %d/%d: train loss %.4f, %s %s, %.1f s",
                    s.role,
                    epoch + 1,
                    s.epochs,
                    train_loss,
                    monitor,
                    "n/a" if shown is None else f"{shown:.4f}",
                    record["epoch_time_s"],
                )

    def elapsed(self) -> float:
        return self.elapsed_before + (time.monotonic() - getattr(self, "t0", time.monotonic()))

    # ---------------------------------------------------------------- bundle
    def write(self) -> Path:
        s = self.s
        last = self.history[-1] if self.history else {}
        validation = {k: v for k, v in last.items() if k.startswith("val_")}
        entry = {
            "data_specs": list(s.data_specs),
            "data": self.described,
            "trained_on_synthetic_data": self.synthetic,
            "command": s.command,
            "epochs": s.epochs,
            "seed": s.seed,
            "batch_size": s.batch_size,
            "lr": s.lr,
            "optimizer": "Adam",
            "lr_schedule": self.schedule.state_dict(),
            "loss": (
                segmentation_loss_text(s.architecture, s.train.lesion_weight)
                if s.role == "segmentation"
                else "cross-entropy"
            ),
            "sampling": "shuffled" if s.role == "segmentation" else "class-balanced",
            "augmentation": asdict(s.train.augment)
            if s.role != "segmentation"
            else {k: v for k, v in asdict(s.train.augment).items() if not k.startswith("erase")},
            "val_fraction": s.val_fraction,
            "split": "patient-level (pipeline.datasets.patient_split)",
            "max_slices_per_case": s.max_slices_per_case,
            "lung_mask_source": self.mask_sources,
            "lung_mask_unet_sha256": self.mask_unet_sha256,
            "cases": {"train": self.n_cases[0], "validation": self.n_cases[1]},
            "slices": {"train": len(self.train_set), "validation": len(self.val_set) if self.val_set else 0},
            "validation": validation,
            "validation_monitor": MONITOR[s.role],
            "history": [{k: r.get(k) for k in ("epoch", "train_loss", MONITOR[s.role])} for r in self.history],
            "resumed_after_epoch": self.start_epoch or None,
            "training_time_s": round(self.elapsed(), 1),
            "device": _device_name(self.device),
            "torch": torch.__version__,
            "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        if s.role == "segmentation" and s.max_slices_per_case is not None and s.train.seg_lesion_slice_share > 0:
            entry["slice_sampling"] = (
                f"{s.max_slices_per_case} slices per case: {s.train.seg_lesion_slice_share:.0%} "
                f"evenly among slices with > {s.train.locator_lesion_pixels} lesion pixels, "
                f"the rest evenly over the scan"
            )
        if s.role == "locator":
            entry["slice_label_rule"] = (
                f"infected if > {s.train.locator_lesion_pixels} lesion pixels; "
                f"slices of every class (non-pneumonia scans: all normal)"
            )
        if s.role == "classifier":
            entry["slice_label_rule"] = (
                f"lesion: a slice of a pneumonia scan takes the scan's class when it has > "
                f"{s.train.locator_lesion_pixels} lesion pixels, else non_pneumonia (scans without a lesion "
                f"mask: weak, the scan's label)"
                if s.train.slice_labels == "lesion"
                else "weak: every lung slice takes its scan's label"
            )
        if s.role != "segmentation" or s.train.intensity_augmentation:
            entry["input"] = "lung only: [mask, mask*HU(hu_window), mask*HU(lung_detail_window)] of the lung box"
        entry["intensity_augmentation"] = s.train.intensity_augmentation
        return update_bundle(
            self.out,
            s.role,
            self.model,
            s.architecture,
            entry,
            synthetic=self.synthetic,
            name=s.name,
            version=s.version,
            description=s.description,
        )


def _soft_dice(prob: torch.Tensor, truth: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    return (2 * (prob * truth).sum(dims) + 1.0) / (prob.sum(dims) + truth.sum(dims) + 1.0)


def segmentation_loss(logits: torch.Tensor, y: torch.Tensor, lesion_weight: float) -> torch.Tensor:
    """Loss of the lung U-Net on (n, h, w) targets 0 / 1 / SEG_LESION.

    Cross-entropy with lesion pixels weighted ``lesion_weight`` (dense disease must stay
    lung) plus the soft Dice of the lung (classes 1 + 2) per slice. A 3-class U-Net learns
    the lesion class itself, with a soft Dice of the lesion over the whole batch (most
    slices hold none, and a per-slice Dice of an empty target rewards predicting nothing);
    a 2-class U-Net learns lesion pixels as lung.
    """
    prob = F.softmax(logits, dim=1)
    lesion = y == SEG_LESION
    weight = 1.0 + (lesion_weight - 1.0) * lesion.float()
    three = logits.shape[1] > UNET_LESION
    target = y.long() if three else (y > 0).long()
    ce = (F.cross_entropy(logits, target, reduction="none") * weight).sum() / weight.sum()
    lung_dice = _soft_dice(prob[:, UNET_LUNG:].sum(dim=1), (y > 0).float(), (1, 2))
    loss = ce + (1.0 - lung_dice).mean()
    if three:
        loss = loss + (1.0 - _soft_dice(prob[:, UNET_LESION], lesion.float(), (0, 1, 2)))
    return loss


def segmentation_loss_text(arch: Mapping[str, Any], lesion_weight: float) -> str:
    """How ``segmentation_loss`` trained this architecture, for the model card."""
    text = f"cross-entropy (lesion pixels weighted {lesion_weight:g}x) + soft Dice of the lung"
    return text + " + soft Dice of the lesion class (whole batch)" if unet_has_lesion_head(arch) else text


def train_role(settings: TrainSettings) -> TrainOutcome:
    """Train one role of the chain and write/update the bundle in ``settings.out_dir``."""
    run = _Run(settings)
    with _torch_state(settings.threads):
        run.load_data()
        run.build()
        if run.start_epoch >= settings.epochs:
            log.info("%s: checkpoint already has %d epoch(s); writing the bundle only", settings.role, run.start_epoch)
        else:
            run.run_epochs()
        bundle = run.write()
    last = run.history[-1] if run.history else {}
    return TrainOutcome(
        bundle_dir=bundle,
        role=settings.role,
        epochs_done=len(run.history),
        validation={k: v for k, v in last.items() if k.startswith("val_")},
        history=run.history,
    )
