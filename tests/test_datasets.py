"""Data set readers: phantom specs, manifest CSV (NIfTI and DICOM), MosMedData, CC-CCII,
errors that name the file, patient-level splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from pipeline.datasets import (
    Case,
    CaseData,
    Dataset,
    DatasetError,
    open_dataset,
    patient_split,
)
from pipeline.types import CLASS_NAMES, CTVolume, InvalidInputError

RNG = np.random.default_rng(20260101)


def write_nifti(path: Path, zyx: np.ndarray, spacing_xyz=(0.7, 0.8, 2.5), origin_xyz=(-10.0, -20.0, 30.0)) -> Path:
    image = sitk.GetImageFromArray(zyx)
    image.SetSpacing(spacing_xyz)
    image.SetOrigin(origin_xyz)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def small_ct(shape=(5, 6, 7)) -> np.ndarray:
    return RNG.integers(-1000, 400, size=shape).astype(np.int16)


# ----------------------------------------------------------------------- phantoms


def test_phantom_spec_parses_and_loads():
    ds = open_dataset("phantom:count=8,seed=1000,mix=1:1:1:1,slices=24,size=96")
    assert isinstance(ds, Dataset) and len(ds) == 8 and ds.synthetic
    d = ds.describe()
    assert d["kind"] == "phantom" and d["cases"] == 8 and d["patients"] == 8
    assert d["labels"] == {name: 2 for name in CLASS_NAMES}
    assert d["slices"] == 24 and d["size_px"] == 96 and d["spec"].startswith("phantom:")
    case = ds[0]
    assert isinstance(case, Case) and case.sex in ("M", "F") and 18 <= case.age <= 90
    volume, lung, lesion, _ = case.load()
    assert isinstance(volume, CTVolume) and volume.shape == (24, 96, 96)
    assert lung.shape == lesion.shape == volume.shape and lung.any()
    assert (lesion.any()) == (case.label != "non_pneumonia")
    # Same spec, same cases; a different seed, other cases.
    again = open_dataset("phantom:count=8,seed=1000,mix=1:1:1:1,slices=24,size=96")
    assert [c.case_id for c in again] == [c.case_id for c in ds]
    assert [c.label for c in again] == [c.label for c in ds]
    other = open_dataset("phantom:count=8,seed=1001,slices=24,size=96")
    assert {c.extras["seed"] for c in other}.isdisjoint({c.extras["seed"] for c in ds})


def test_phantom_spec_mix_and_patients():
    ds = open_dataset("phantom:count=12,seed=3,mix=0:0:1:1,per_patient=2")
    assert {c.label for c in ds} == {"influenza", "covid19"}
    assert ds.describe()["patients"] == 6
    assert sorted({c.stage for c in ds}) == ["1", "2"]


@pytest.mark.parametrize(
    "spec, words",
    [
        ("phantom:seed=1", "count is required"),
        ("phantom:count=4,colour=red", "unknown key 'colour'"),
        ("phantom:count=four", "not a whole number"),
        ("phantom:count=4,mix=1:1", "mix"),
        ("phantom:count=4,mix=1:1:x:1", "mix"),
        ("phantom:count=4,slices=2", "slices must be at least 8"),
        ("phantom:count=4,seed", "not key=value"),
        ("phantom:count=4,count=5", "given twice"),
    ],
)
def test_bad_phantom_specs(spec, words):
    with pytest.raises(DatasetError, match=words):
        open_dataset(spec)


@pytest.mark.parametrize("spec", ["", "   ", "/no/such/place.csv", "nosuchscheme:abc"])
def test_bad_specs(spec):
    with pytest.raises(InvalidInputError):
        open_dataset(spec)


def test_unknown_folder_and_non_csv_file(tmp_path):
    (tmp_path / "random").mkdir()
    with pytest.raises(DatasetError, match="no known layout"):
        open_dataset(str(tmp_path / "random"))
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(DatasetError, match="not a manifest"):
        open_dataset(str(tmp_path / "x.txt"))


# ----------------------------------------------------------------------- manifest


def test_manifest_with_nifti_and_masks(tmp_path):
    a, b = small_ct(), small_ct((4, 6, 7))
    write_nifti(tmp_path / "vol" / "a.nii.gz", a)
    write_nifti(tmp_path / "vol" / "b.nii", b)
    lung = (RNG.uniform(size=a.shape) > 0.5).astype(np.uint8)
    write_nifti(tmp_path / "masks" / "a_lung.nii.gz", lung)
    write_nifti(tmp_path / "masks" / "a_lesion.nii.gz", lung * 0)
    csv = tmp_path / "sets" / "m.csv"
    csv.parent.mkdir()
    csv.write_text(
        "path,label,patient_id,sex,age,stage,lung_mask,lesion_mask\n"
        "../vol/a.nii.gz,covid19,P1,female,61,2,../masks/a_lung.nii.gz,../masks/a_lesion.nii.gz\n"
        "\n"
        "../vol/b.nii,cap,,M,,,,\n"
    )
    ds = open_dataset(str(csv))
    assert ds.kind == "manifest" and not ds.synthetic and len(ds) == 2
    first, second = ds
    assert (first.case_id, first.patient_id, first.label) == ("a", "P1", "covid19")
    assert (first.sex, first.age, first.stage) == ("F", 61.0, "2")
    assert (second.case_id, second.patient_id, second.sex, second.age) == ("b", "b", "M", None)
    data = first.load()
    assert isinstance(data, CaseData)
    v = data.volume
    assert v.hu.dtype == np.float32 and v.shape == (5, 6, 7)  # z, y, x as written
    assert np.array_equal(v.hu, a.astype(np.float32))
    assert v.spacing_mm == pytest.approx((2.5, 0.8, 0.7))  # SimpleITK's x, y, z reversed
    assert v.origin_mm == pytest.approx((-10.0, -20.0, 30.0))
    assert np.array_equal(data.lung_mask, lung > 0) and not data.lesion_mask.any()
    assert second.load().lung_mask is None
    described = ds.describe()
    assert described["labels"]["covid19"] == 1 and len(described["manifest_sha256"]) == 64
    # The "manifest:" prefix works too.
    assert len(open_dataset(f"manifest:{csv}")) == 2


def test_nifti_stored_flipped_is_read_in_lps_with_its_mask(tmp_path):
    ct = small_ct((4, 5, 6))
    mask = np.zeros(ct.shape, np.uint8)
    mask[1, 0, 0] = 1  # first row and column as stored
    for name, arr in (("ras.nii.gz", ct), ("ras_mask.nii.gz", mask)):
        image = sitk.GetImageFromArray(arr)
        image.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))  # RAS, as many NIfTI writers store it
        sitk.WriteImage(image, str(tmp_path / name))
    (tmp_path / "m.csv").write_text("path,label,lesion_mask\nras.nii.gz,covid19,ras_mask.nii.gz\n")
    volume, _, lesion, _ = open_dataset(str(tmp_path / "m.csv"))[0].load()
    assert volume.direction == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert np.array_equal(volume.hu, ct[:, ::-1, ::-1].astype(np.float32))
    assert lesion[1, -1, -1] and lesion.sum() == 1  # flipped with the volume
    # The plain reader keeps the file's own grid (dicomnode analyze saves masks on it).
    from pipeline.datasets.images import read_volume

    native = read_volume(tmp_path / "ras.nii.gz")
    assert native.direction == pytest.approx((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    assert np.array_equal(native.hu, ct.astype(np.float32))


def test_manifest_with_dicom_series(tmp_path):
    synthetic = pytest.importorskip("dicomnode.synthetic")
    hu = RNG.integers(-1000, 500, size=(6, 16, 12)).astype(np.float32)
    volume = CTVolume(
        hu=hu, spacing_mm=(2.0, 0.75, 0.75), origin_mm=(-5.0, -6.0, 100.0), slice_numbers=tuple(range(1, 7))
    )
    series = synthetic.write_ct_series(volume, tmp_path / "series1")
    (tmp_path / "m.csv").write_text("path,label,case_id\nseries1,influenza,S1\n")
    case = open_dataset(str(tmp_path / "m.csv"))[0]
    got = case.load().volume
    assert got.shape == (6, 16, 12)
    assert np.allclose(got.hu, hu, atol=0.5)  # rescale slope/intercept applied
    assert got.spacing_mm == pytest.approx((2.0, 0.75, 0.75), abs=1e-3)
    assert got.slice_uids == series.sop_uids
    assert got.slice_numbers == tuple(range(1, 7))


def _manifest(tmp_path: Path, text: str) -> Path:
    write_nifti(tmp_path / "a.nii.gz", small_ct())
    path = tmp_path / "m.csv"
    path.write_text(text)
    return path


def test_manifest_dicom_style_age_and_unknown_sex(tmp_path):
    path = _manifest(
        tmp_path, "path,label,case_id,sex,age\na.nii.gz,cap,1,O,045Y\na.nii.gz,cap,2,,18M\na.nii.gz,cap,3,u,70.5\n"
    )
    ages = [(c.sex, c.age) for c in open_dataset(str(path))]
    assert ages == [(None, 45.0), (None, 1.5), (None, 70.5)]


def test_manifest_severity_grades_are_kept_as_ct_grades(tmp_path):
    path = _manifest(
        tmp_path,
        "path,label,case_id,severity\na.nii.gz,covid19,1,CT-2\na.nii.gz,covid19,2,ct4\n"
        "a.nii.gz,non_pneumonia,3,0\na.nii.gz,cap,4,\n",
    )
    assert [c.extras.get("severity") for c in open_dataset(str(path))] == ["CT-2", "CT-4", "CT-0", None]


@pytest.mark.parametrize(
    "text, words",
    [
        ("file,label\na.nii.gz,cap\n", "lacks column"),
        ("path,label,severity\na.nii.gz,cap,CT-5\n", r"line 2: severity 'CT-5' is not a grade"),
        ("path,label,colour\na.nii.gz,cap,red\n", "unknown column"),
        ("path,label\na.nii.gz,pneumonia\n", r"m.csv line 2: label 'pneumonia'"),
        ("path,label\na.nii.gz,cap\nmissing.nii.gz,cap\n", r"line 3: .*missing.nii.gz does not exist"),
        ("path,label,case_id\na.nii.gz,cap,X\na.nii.gz,cap,X\n", "case_id 'X' already used on line 2"),
        ("path,label,age\na.nii.gz,cap,old\n", "age 'old'"),
        ("path,label,sex\na.nii.gz,cap,Q\n", "sex 'Q'"),
        ("path,label,lung_mask\na.nii.gz,cap,nomask.nii.gz\n", "lung_mask .*nomask.nii.gz does not exist"),
        ("path,label\n", "no rows"),
        ("", "empty manifest"),
    ],
)
def test_manifest_errors_name_the_row(tmp_path, text, words):
    with pytest.raises(DatasetError, match=words):
        open_dataset(str(_manifest(tmp_path, text)))


def test_unreadable_files_fail_on_load_naming_the_file(tmp_path):
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti at all")
    write_nifti(tmp_path / "a.nii.gz", small_ct())
    write_nifti(tmp_path / "small_mask.nii.gz", np.zeros((2, 6, 7), np.uint8))
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "m.csv").write_text(
        "path,label,case_id,lung_mask\nbroken.nii.gz,cap,1,\na.nii.gz,cap,2,small_mask.nii.gz\nempty_dir,cap,3,\n"
    )
    broken, mismatch, empty = open_dataset(str(tmp_path / "m.csv"))
    with pytest.raises(DatasetError, match="broken.nii.gz: cannot read"):
        broken.load()
    with pytest.raises(DatasetError, match=r"small_mask.nii.gz: mask has shape \(2, 6, 7\)"):
        mismatch.load()
    with pytest.raises(DatasetError, match="empty_dir: no DICOM series"):
        empty.load()


def test_os_errors_become_dataset_errors(tmp_path):
    def unreadable():
        raise PermissionError(13, "Permission denied", str(tmp_path / "secret.nii.gz"))

    case = Case("c1", "p1", "cap", source="x", loader=unreadable)
    with pytest.raises(DatasetError, match="secret.nii.gz: Permission denied"):
        case.load()


# ----------------------------------------------------------------------- MosMedData


def test_mosmed_layout(tmp_path):
    root = tmp_path / "COVID19_1110"
    write_nifti(root / "studies" / "CT-0" / "study_0001.nii.gz", small_ct())
    write_nifti(root / "studies" / "CT-1" / "study_0002.nii.gz", small_ct())
    write_nifti(root / "studies" / "CT-3" / "study_0003.nii", small_ct())
    (root / "studies" / "CT-3" / "readme.txt").write_text("not a volume")
    lesion = np.zeros((5, 6, 7), np.uint8)
    lesion[2, 3, 3] = 1
    write_nifti(root / "masks" / "study_0002_mask.nii.gz", lesion)
    ds = open_dataset(str(root))
    assert ds.kind == "mosmeddata"
    by_id = {c.case_id: c for c in ds}
    assert set(by_id) == {"study_0001", "study_0002", "study_0003"}
    assert by_id["study_0001"].label == "non_pneumonia"
    assert by_id["study_0002"].label == by_id["study_0003"].label == "covid19"
    assert by_id["study_0003"].extras["group"] == "CT-3"
    assert by_id["study_0002"].load().lesion_mask.sum() == 1
    assert by_id["study_0001"].load().lesion_mask is None
    assert ds.describe()["groups"] == {"CT-0": 1, "CT-1": 1, "CT-3": 1}
    # The studies/ folder itself, and the explicit prefix, work too.
    assert len(open_dataset(f"mosmed:{root / 'studies'}")) == 3


def test_mosmed_without_volumes(tmp_path):
    (tmp_path / "CT-0").mkdir()
    with pytest.raises(DatasetError, match="no .nii"):
        open_dataset(str(tmp_path))


# ----------------------------------------------------------------------- CC-CCII


def write_slices(folder: Path, values: dict[str, int], size=(8, 6)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, value in values.items():
        Image.fromarray(np.full(size[::-1], value, np.uint8)).save(folder / name)


def test_ccccii_layout_order_and_pseudo_hu(tmp_path):
    root = tmp_path / "ccccii"
    # Numeric order: 2 before 10 (a plain name sort would put 10 first).
    write_slices(root / "NCP" / "1001" / "3001", {"10.png": 255, "2.png": 0, "1.png": 51})
    write_slices(root / "CP" / "2001" / "4001", {"0001.jpg": 128, "0002.jpg": 128})
    write_slices(root / "CP" / "2001" / "4002", {"0001.png": 10})
    write_slices(root / "Normal" / "3001" / "5001", {"slice_7.png": 0})
    ds = open_dataset(str(root))
    assert ds.kind == "cc-ccii" and len(ds) == 4
    by_id = {c.case_id: c for c in ds}
    ncp = by_id["NCP-1001-3001"]
    assert ncp.label == "covid19" and ncp.patient_id == "1001"
    assert by_id["CP-2001-4001"].label == "cap" and by_id["Normal-3001-5001"].label == "non_pneumonia"
    hu = ncp.load().volume.hu
    assert hu.shape == (3, 6, 8)
    assert hu[:, 0, 0] == pytest.approx([51 / 255 * 1500 - 1400, -1400.0, 100.0])
    assert ds.describe()["patients"] == 3


def test_ccccii_errors(tmp_path):
    root = tmp_path / "c"
    write_slices(root / "NCP" / "1" / "1", {"a.png": 0})
    with pytest.raises(DatasetError, match="a.png: the file name holds no slice number"):
        open_dataset(str(root))
    root2 = tmp_path / "d"
    write_slices(root2 / "CP" / "1" / "1", {"1.png": 0})
    write_slices(root2 / "CP" / "1" / "1", {"2.png": 0}, size=(9, 9))
    case = open_dataset(f"ccccii:{root2}")[0]
    with pytest.raises(DatasetError, match="2.png: slice is 9x9 px"):
        case.load()
    (root2 / "CP" / "1" / "1" / "2.png").unlink()
    (root2 / "CP" / "1" / "1" / "3.png").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="3.png: cannot read the slice image"):
        open_dataset(str(root2))[0].load()


# ----------------------------------------------------------------------- splits


def _cases(n_patients: int, per_patient: int) -> list[Case]:
    out = []
    for p in range(n_patients):
        for s in range(per_patient):
            out.append(Case(case_id=f"P{p}-S{s}", patient_id=f"P{p}", label=CLASS_NAMES[p % 4]))
    return out


def test_patient_split_has_no_leakage_and_is_deterministic():
    cases = _cases(40, 3)
    train, val, test = patient_split(cases, (0.6, 0.2, 0.2), seed=5)
    groups = [{c.patient_id for c in part} for part in (train, val, test)]
    assert not (groups[0] & groups[1]) and not (groups[0] & groups[2]) and not (groups[1] & groups[2])
    assert sorted(c.case_id for c in train + val + test) == sorted(c.case_id for c in cases)
    assert 60 <= len(train) <= 84 and len(val) >= 18 and len(test) >= 18
    for part in (train, val, test):  # stratified: every class in every cohort
        assert {c.label for c in part} == set(CLASS_NAMES)
    again = patient_split(cases, (0.6, 0.2, 0.2), seed=5)
    assert [c.case_id for c in again[1]] == [c.case_id for c in val]
    other = patient_split(cases, (0.6, 0.2, 0.2), seed=6)
    assert [c.case_id for c in other[1]] != [c.case_id for c in val]


def test_patient_split_single_fraction_and_phantom_patients():
    ds = open_dataset("phantom:count=30,seed=2,per_patient=3")
    train, val = patient_split(ds, 0.3, seed=1)
    assert not {c.patient_id for c in train} & {c.patient_id for c in val}
    assert len(train) + len(val) == 30 and 6 <= len(val) <= 12
    with pytest.raises(DatasetError, match="between 0 and 1"):
        patient_split(ds, 1.5)
    with pytest.raises(DatasetError, match="non-negative"):
        patient_split(ds, (0.5, -0.1, 0.6))


def test_cases_pickle_and_hash():
    import pickle

    ds = open_dataset("phantom:count=3,seed=1,slices=16,size=64")
    copy = pickle.loads(pickle.dumps(ds[1]))  # data loader workers receive cases this way
    assert copy == ds[1] and copy.load().volume.shape == (16, 64, 64)
    assert len(set(ds)) == 3


def test_case_checks_its_fields():
    with pytest.raises(DatasetError, match="label"):
        Case(case_id="a", patient_id="a", label="flu")
    with pytest.raises(DatasetError, match="sex"):
        Case(case_id="a", patient_id="a", label="cap", sex="X")
    with pytest.raises(DatasetError, match="duplicate case ids"):
        Dataset("x", "manifest", [Case("a", "a", "cap"), Case("a", "b", "cap")], synthetic=False)
