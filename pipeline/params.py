"""Named parameters of the AI chain, in one place (no magic numbers inside stages)."""

from __future__ import annotations

from dataclasses import dataclass

#: A slice is "infected" when it holds more than this many lesion pixels (the paper's
#: code: > 50). The one rule: phantom truth (``infected_z``), evaluation truth
#: (``EvalParams.lesion_min_px``) and the locator's training labels.
INFECTED_SLICE_MIN_PIXELS = 50


@dataclass(frozen=True)
class ChainParams:
    # Preprocessing (METHOD.md, module 2)
    hu_window: tuple[float, float] = (-1200.0, 700.0)
    #: Second input channel's window: the lung's own range, so ground glass and fine
    #: texture get contrast (the wide window keeps consolidation apart).
    lung_detail_window: tuple[float, float] = (-1000.0, -200.0)
    input_size: int = 224
    max_slices: int = 35
    min_lung_pixels: int = 500  # slices with less lung are not classified (paper code)
    #: Less lung than this in the whole series: not a chest CT (head, abdomen only, or a
    #: scan that misses the lungs); adult lungs hold 3-7 l, the lung bases alone of an
    #: abdominal CT a few hundred ml at most.
    min_chest_lung_ml: float = 400.0
    # Lung segmentation
    unet_input_size: int = 128  # U-Net runs at this in-plane size, mask upsampled back
    hu_clip_min: float = -1024.0
    unet_threshold: float = 0.5  # on the U-Net's lung probability
    lesion_threshold: float = 0.5  # on a 3-class U-Net's lesion probability
    #: A slice "has a lesion" (U-Net lesion map) with at least this area: a reported
    #: infectious slice needs one (the locator's flag alone is not enough).
    lesion_slice_min_mm2: float = 30.0
    #: Severity (pipeline.severity): lesion voxels at or above this HU are consolidation,
    #: below it ground glass; a lesion smaller than ``severity_min_involved_ml`` in a lobe
    #: (or the lungs) counts as none (stray voxels of a lesion map are no involvement).
    severity_consolidation_hu: float = -300.0
    severity_min_involved_ml: float = 0.1
    #: Lobes (pipeline.lobes) segmented for the per-lobe involvement and the CT severity
    #: score whenever severity is measured; off: whole-lung figures only.
    lobe_segmentation: bool = True
    # Classical HU-threshold lung segmentation (fallback and reference)
    classical_work_px: int = 128  # components/morphology at about this in-plane size; edges refined at full size
    classical_air_hu: float = -320.0  # lung parenchyma and airways are below this
    classical_body_hu: float = -500.0  # the body (soft tissue, bone) is above this
    airway_max_area_mm2: float = 700.0  # a central air region smaller than this in a slice is trachea/bronchus
    airway_central_fraction: float = 0.15  # "central": centroid within this fraction of the body width of its middle
    lung_second_min_fraction: float = 0.1  # second air component is a lung when at least this fraction of the first
    classical_closing_mm: float = 10.0  # closing radius per lung: takes juxta-pleural lesions and vessels in
    # Lung mask refinement, both methods (pipeline.lung.refine_lung_mask): dense disease
    # touching the pleura or mediastinum is lung, the heart and chest wall are not.
    # Density of disease that may join the lung (ground glass to tumour); above: bone.
    lung_dense_hu: tuple[float, float] = (-500.0, 150.0)
    # 3-D closing ball per lung: takes masses up to ~60 mm in and stays smaller than the
    # heart, whose outline stays (35 takes more consolidation but rims of heart too).
    lung_ball_mm: float = 30.0
    lung_ball_z_mm: float = 5.0  # the ball closing pools thin slices to about this spacing (speed)
    # A dense region or hole joins only with aerated lung below this share of it: the
    # diaphragm's dome, an island in the lung's lowest slices, has none.
    lung_below_min_fraction: float = 0.05
    # The normal chest-wall band (pleura, ribs): this percentile of the lung edge's depth
    # inside the rib-cage hull; deeper dense tissue between lung and wall is disease.
    lung_wall_band_percentile: float = 15.0
    lung_wall_open_px: int = 1  # opening radius cutting strips along the wall that join a lesion to the mediastinum
    lung_dense_grow_px: int = 1  # recovered regions grow this far: their edge at wall/mediastinum is invisible
    lung_envelope_directions: int = 32  # sides of the polygonal convex hull of bone (the rib-cage envelope)
    lung_trunk_hu: float = -250.0  # soft tissue (fat and denser) that makes up the trunk and the arms
    lung_outside_ribs_mm: float = 5.0  # dense mask voxels farther outside the rib-cage envelope are dropped
    # Fusion
    top_k: int = 3
    decision_threshold: float = 0.5
    # Locating
    locator_threshold: float = 0.5
    locator_median_width: int = 5
    # Interpretation
    max_explained_slices: int = 5
    attention_min_area_px: int = 200
    attention_threshold: float = 0.5  # of the normalised Guided Grad-CAM
    lung_margin_px: int = 5  # attention kept inside the lung dilated by this margin (px of a 512 slice)
    #: Gaussian smoothing of Guided Grad-CAM before binarising (pixels of a 224-px input,
    #: scaled to input_size).
    attention_sigma_px: float = 2.0
    attention_morph_radius_px: int = 2  # disk radius of the opening and closing of the binarised map
    gradcam_layer: str = "layer4"  # the classifier layer Grad-CAM weights (MONAI ResNet's last stage)
    # Compute
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:N"
    batch_size: int = 16
    #: U-Net slices per forward pass. Measured 2026-12-03 on the 2-core CPU, a 300-slice
    #: 512 x 512 phantom (lung segmentation, medians of 2-3 runs, same process): 64 slices
    #: 5.4 s, 16 slices 3.3 s, 8 slices 3.5 s, 4 slices 3.5 s (large batches leave the
    #: cache); a GPU may want more.
    unet_batch_size: int = 16
    #: Thin slices: the U-Net runs on every k-th slice, k the largest whole number with
    #: k x slice spacing <= this (mm), and the probabilities of the slices between are
    #: interpolated linearly along z (the lungs and their lesions do not change within a
    #: couple of millimetres). 0: every slice. 1-1.25 mm slices: every other slice.
    unet_max_z_step_mm: float = 2.5
    compute_phenotype: bool = True
    # Phenotype (radiomics of attention regions)
    radiomics_bin_width: float = 25.0  # HU per grey level
    radiomics_log_sigma_mm: tuple[float, ...] = ()  # LoG image types (slow: off in the node)
    radiomics_wavelet: bool = False  # wavelet image types (slow: off in the node)


@dataclass(frozen=True)
class EvalParams:
    """Named settings of the evaluation protocol (pipeline.evaluate)."""

    n_bootstrap: int = 1000
    seed: int = 0
    confidence: float = 0.95
    #: Age band edges in years: (40, 60) gives "<40", "40-59", ">=60".
    age_band_edges: tuple[int, ...] = (40, 60)
    #: A slice is infected (locating truth) when it holds more lesion pixels than this.
    lesion_min_px: int = INFECTED_SLICE_MIN_PIXELS
    #: Thresholds of the decision curves (net benefit), in [0, 1).
    dca_thresholds: tuple[float, ...] = tuple(round(0.01 * i, 2) for i in range(1, 100))
    #: t-SNE perplexity: at most this, and below the number of cases for small sets.
    tsne_max_perplexity: float = 30.0
    #: Up to this many cases t-SNE runs the exact method: Barnes-Hut is slower on small
    #: sets (its OpenMP threads dominate) and exact is O(n^2).
    tsne_exact_max_cases: int = 500
    #: When the chain segments with the U-Net and lung truth is given, also measure the
    #: classical HU-threshold method as a reference (costs one classical segmentation).
    classical_reference: bool = True

    def __post_init__(self) -> None:
        if self.n_bootstrap < 0:
            raise ValueError(f"EvalParams.n_bootstrap must be >= 0, got {self.n_bootstrap}")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"EvalParams.confidence must lie in (0, 1), got {self.confidence}")
        if list(self.age_band_edges) != sorted(set(self.age_band_edges)):
            raise ValueError(f"EvalParams.age_band_edges must increase, got {self.age_band_edges}")


@dataclass(frozen=True)
class PhenotypeStudyParams:
    """Named settings of the phenotype study (pipeline.phenotype_study, METHOD.md module 6)."""

    #: LoG image types (sigma in mm, 2-D) and the wavelet image types of the radiomics.
    log_sigma_mm: tuple[float, ...] = (2.0, 4.0)
    wavelet: bool = True
    #: LASSO keeps at most this many features (the paper keeps 12).
    max_selected: int = 12
    #: Inverse regularisation strengths tried by the cross-validation: this many values
    #: spaced evenly on a log scale from the smallest that keeps a feature
    #: (sklearn.svm.l1_min_c) to ``lasso_path_ratio`` times it (glmnet's path: its
    #: lambda.min.ratio is 0.01 when there are more features than cases).
    lasso_cs: int = 20
    lasso_path_ratio: float = 100.0
    #: Stratified folds of the cross-validation (fewer when a class has fewer cases).
    cv_folds: int = 5
    lasso_max_iter: int = 10000
    #: A comparison runs only with at least this many cases with features in each class.
    min_cases_per_class: int = 3
    #: A feature missing (NaN) in more than this share of a comparison's cases is left out
    #: of it; the rest are imputed with the feature's median there (LASSO only).
    max_missing_fraction: float = 0.5
    #: False discovery rate of the Benjamini-Hochberg correction ("significant" below it).
    fdr_alpha: float = 0.05
    #: Seed of the cross-validation folds.
    seed: int = 0
    #: Rows of the test table the report shows (tests.csv holds them all).
    report_top_tests: int = 15

    def __post_init__(self) -> None:
        if self.max_selected < 1:
            raise ValueError(f"PhenotypeStudyParams.max_selected must be >= 1, got {self.max_selected}")
        if self.lasso_cs < 2 or self.lasso_path_ratio <= 1.0:
            raise ValueError(
                "PhenotypeStudyParams needs lasso_cs >= 2 and lasso_path_ratio > 1, "
                f"got {self.lasso_cs} and {self.lasso_path_ratio}"
            )
        if self.cv_folds < 2:
            raise ValueError(f"PhenotypeStudyParams.cv_folds must be >= 2, got {self.cv_folds}")
        if self.min_cases_per_class < 2:
            raise ValueError(f"PhenotypeStudyParams.min_cases_per_class must be >= 2, got {self.min_cases_per_class}")
        if not 0.0 <= self.max_missing_fraction < 1.0:
            raise ValueError(
                f"PhenotypeStudyParams.max_missing_fraction must lie in [0, 1), got {self.max_missing_fraction}"
            )
        if not 0.0 < self.fdr_alpha < 1.0:
            raise ValueError(f"PhenotypeStudyParams.fdr_alpha must lie in (0, 1), got {self.fdr_alpha}")
        if any(s <= 0 for s in self.log_sigma_mm):
            raise ValueError(f"PhenotypeStudyParams.log_sigma_mm must be positive, got {self.log_sigma_mm}")
