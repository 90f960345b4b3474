"""Volume IO: ITK formats round-trip geometry exactly; DICOM cases read like SimpleITK or are refused."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from shared_data import data_path

import deepstd
from deepstd import InputError, Volume
from deepstd.io.dicom import list_series


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha", ".mhd"])
def test_itk_round_trip_keeps_geometry_and_dtype(tmp_path, oblique_volume, suffix):
    path = deepstd.write(oblique_volume, tmp_path / f"scan{suffix}")
    back = deepstd.read(path)
    assert back.size == oblique_volume.size
    assert back.dtype == "int16"
    np.testing.assert_allclose(back.spacing, oblique_volume.spacing, atol=1e-6)
    np.testing.assert_allclose(back.origin, oblique_volume.origin, atol=1e-5)
    np.testing.assert_allclose(back.direction, oblique_volume.direction, atol=1e-6)
    np.testing.assert_array_equal(back.array, oblique_volume.array)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_write_clips_and_rounds_to_original_dtype(tmp_path):
    volume = Volume(np.array([[[-3.6, 0.4, 255.6, 400.0]]], np.float32), dtype="uint8")
    back = deepstd.read(deepstd.write(volume, tmp_path / "v.nrrd"))
    np.testing.assert_array_equal(back.array.ravel(), [0, 0, 255, 255])


def test_bad_inputs_raise_input_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        deepstd.read(tmp_path / "missing.nii.gz")
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(InputError, match="broken.nii.gz"):
        deepstd.read(broken)
    with pytest.raises(InputError, match="unknown output format"):
        deepstd.write(Volume(np.zeros((2, 2, 2))), tmp_path / "x.png")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no DICOM images"):
        deepstd.read(empty)


def test_volume_rejects_bad_geometry():
    with pytest.raises(InputError, match="spacing"):
        Volume(np.zeros((2, 2, 2)), spacing=(1, 0, 1))
    with pytest.raises(InputError, match="orthonormal"):
        Volume(np.zeros((2, 2, 2)), direction=(1, 0, 0, 0, 2, 0, 0, 0, 1))
    with pytest.raises(InputError, match="3-D"):
        Volume(np.zeros((2, 2)))


# --- DICOM --------------------------------------------------------------------------------------
def _sitk_series(folder, uid=None):
    reader = sitk.ImageSeriesReader()
    uids = reader.GetGDCMSeriesIDs(str(folder))
    files = reader.GetGDCMSeriesFileNames(str(folder), uid if uid is not None else uids[0])
    reader.SetFileNames(files)
    return reader.Execute()


def _assert_matches_sitk(volume, image, exact_values=True):
    assert volume.size == image.GetSize()
    np.testing.assert_allclose(volume.spacing, image.GetSpacing(), rtol=1e-4)
    np.testing.assert_allclose(volume.origin, image.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(volume.direction, image.GetDirection(), atol=1e-5)
    if exact_values:
        np.testing.assert_array_equal(volume.array, sitk.GetArrayFromImage(image).astype(np.float32))


SERIES_CASES = {
    "dicom_edge/unsigned_12bit": ((320, 320, 15), (0.6, 0.6, 3.0)),
    "dicom_edge/unsorted_slices": ((320, 320, 15), (0.6, 0.6, 3.0)),
    "dicom_edge/no_series_uid": ((320, 320, 15), (0.6, 0.6, 3.0)),
    "dicom_edge/rle/series_ProstateX-0000_t2_cor": ((320, 320, 15), (0.6, 0.6, 3.0)),
    "dicom_edge/jpeg_lossless/series_ProstateX-0000_t2_cor": ((320, 320, 15), (0.6, 0.6, 3.0)),
    "dicom_edge/jpeg_ls/series_ProstateX-0000_t2_cor": ((320, 320, 15), (0.6, 0.6, 3.0)),
    "dicom_edge/jpeg2000/series_ProstateX-0000_t2_cor": ((320, 320, 15), (0.6, 0.6, 3.0)),
    "dicom_edge/signed_12bit/series_LungPETCTDx_A0002_B40f": ((512, 512, 6), (0.6465, 0.6465, 8.0)),
    "ct/chest_ct_dicom": ((512, 512, 64), (0.8418, 0.8418, 5.0)),
    "ct/abdomen/TotalSeg_example_ct_dicom_j2k": ((512, 512, 20), (0.9766, 0.9766, 2.0)),
}


@pytest.mark.parametrize("case", sorted(SERIES_CASES))
def test_dicom_series_match_simpleitk(case):
    folder = data_path(case)
    volume = deepstd.read(folder)
    size, spacing = SERIES_CASES[case]
    assert volume.size == size
    np.testing.assert_allclose(volume.spacing, spacing, atol=1e-4)
    _assert_matches_sitk(volume, _sitk_series(folder))


def test_compressed_and_shuffled_series_are_voxel_identical_to_reference():
    reference = deepstd.read(data_path("dicom_edge/unsigned_12bit"))
    assert reference.dtype in ("uint16", "int16") and reference.units == "unitless"
    for case in (
        "unsorted_slices",
        "rle/series_ProstateX-0000_t2_cor",
        "jpeg_lossless/series_ProstateX-0000_t2_cor",
        "jpeg_ls/series_ProstateX-0000_t2_cor",
        "jpeg2000/series_ProstateX-0000_t2_cor",
    ):
        np.testing.assert_array_equal(deepstd.read(data_path("dicom_edge", case)).array, reference.array)


def test_missing_series_uid_reads_with_warning():
    volume = deepstd.read(data_path("dicom_edge/no_series_uid"))
    assert any("SeriesInstanceUID missing" in w for w in volume.meta["warnings"])


def test_ct_is_in_hounsfield_units_with_signed_values():
    chest = deepstd.read(data_path("ct/chest_ct_dicom"))
    assert chest.units == "HU" and chest.dtype == "int16"
    assert chest.array.min() == -1024  # RescaleIntercept -1024 applied to 12-bit unsigned
    signed = deepstd.read(data_path("dicom_edge/signed_12bit/series_LungPETCTDx_A0002_B40f"))
    assert signed.array.min() < -900 and signed.dtype == "int16"  # bit 11 sign-extended


def test_multi_series_is_never_merged_and_each_is_selectable():
    folder = data_path("dicom_edge/multi_series")
    series = list_series(folder)
    assert len(series) == 2 and {len(s.datasets) for s in series} == {5}
    for s in series:
        volume = deepstd.read(folder, series_uid=s.uid)
        assert volume.size == (512, 512, 5)
        np.testing.assert_allclose(volume.spacing, (0.6465, 0.6465, 8.0), atol=1e-4)
        _assert_matches_sitk(volume, _sitk_series(folder, s.uid))
    with pytest.raises(InputError, match="2 series found, 2 of the same size .* choose one with series_uid"):
        deepstd.read(folder)  # equal sizes: reading "the largest" would be a guess
    with pytest.raises(InputError, match="no series with SeriesInstanceUID 1.2.3"):
        deepstd.read(folder, series_uid="1.2.3")


def test_enhanced_multiframe_geometry_from_functional_groups():
    ect = deepstd.read(data_path("dicom_edge/enhanced_multiframe/eCT_Supplemental.dcm"))
    assert ect.size == (512, 512, 2)
    np.testing.assert_allclose(ect.spacing, (0.388672, 0.388672, 10.0), atol=1e-5)
    last = np.asarray(ect.origin) + ect.direction_matrix[:, 2] * ect.spacing[2]
    assert sorted([ect.origin[2], last[2]]) == pytest.approx([-159.0, -149.0])  # frame z positions
    emri = deepstd.read(data_path("dicom_edge/enhanced_multiframe/emri_small.dcm"))
    assert emri.size == (64, 64, 10) and emri.spacing == (1.0, 1.0, 1.0)
    assert any("geometry missing" in w for w in emri.meta["warnings"])


def test_fractional_rescale_gives_float_values():
    path = data_path("dicom_edge/rescale/MR2_UNCR.dcm")
    volume = deepstd.read(path)
    ds = pydicom.dcmread(path)
    expected = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert volume.dtype == "float32" and volume.size == (1024, 1024, 1)
    np.testing.assert_allclose(volume.array[0], expected, rtol=1e-6)


@pytest.mark.parametrize(
    "name",
    [
        "rle/single_files/MR_small_RLE.dcm",
        "jpeg_lossless/single_files/JPEG-LL.dcm",
        "jpeg_ls/single_files/MR_small_jpeg_ls_lossless.dcm",
        "jpeg2000/single_files/MR_small_jp2klossless.dcm",
        "signed_12bit/single_file/mlut_18.dcm",
    ],
)
def test_single_compressed_files_decode_like_pydicom(name):
    path = data_path("dicom_edge", name)
    volume = deepstd.read(path)
    np.testing.assert_array_equal(volume.array[0], pydicom.dcmread(path).pixel_array.astype(np.float32))


def test_dicom_series_written_with_lossy_tags_reads_back(tmp_path):
    source = deepstd.read(data_path("dicom_edge/signed_12bit/series_LungPETCTDx_A0002_B40f"))
    out = deepstd.write(source, tmp_path / "decoded", lossy_ratio=128.4, lossy_method="DEEPSTD")
    files = sorted(out.iterdir())
    assert len(files) == 6
    ds = pydicom.dcmread(files[0])
    assert ds.LossyImageCompression == "01" and float(ds.LossyImageCompressionRatio) == pytest.approx(128.4)
    assert ds.LossyImageCompressionMethod == "DEEPSTD" and list(ds.ImageType[:2]) == ["DERIVED", "SECONDARY"]
    assert ds.PatientID == source.meta["dicom"]["PatientID"]
    assert ds.StudyInstanceUID == source.meta["dicom"]["StudyInstanceUID"]
    assert ds.SeriesInstanceUID != source.meta["series_uid"]
    assert len({pydicom.dcmread(f).SOPInstanceUID for f in files}) == 6
    back = deepstd.read(out)
    np.testing.assert_array_equal(back.array, source.array)
    _assert_matches_sitk(back, _sitk_series(out))


def test_dicom_writer_handles_oblique_float_and_refuses_full_folder(tmp_path, oblique_volume):
    out = deepstd.write(oblique_volume, tmp_path / "oblique")
    back = deepstd.read(out)
    _assert_matches_sitk(back, oblique_volume.to_sitk())
    floats = oblique_volume.with_array(oblique_volume.array / 7.0, dtype="float32")
    back = deepstd.read(deepstd.write(floats, tmp_path / "floats"))
    assert np.max(np.abs(back.array - floats.array)) <= (np.ptp(floats.array) / 65535) * 0.51
    with pytest.raises(InputError, match="new or empty folder"):
        deepstd.write(oblique_volume, out)


def test_series_without_uids_at_the_same_positions_are_refused_not_merged(tmp_path):
    for file in sorted(data_path("dicom_edge/multi_series").iterdir()):
        ds = pydicom.dcmread(file)
        del ds.SeriesInstanceUID
        ds.save_as(tmp_path / file.name)
    with pytest.raises(InputError, match="slices share a position"):
        deepstd.read(tmp_path)


def test_odd_files_in_a_dicom_folder(tmp_path):
    source = sorted(data_path("dicom_edge/unsigned_12bit").iterdir())
    for file in source:
        (tmp_path / file.name).write_bytes(file.read_bytes())
    (tmp_path / "notes.txt").write_text("not dicom")
    (tmp_path / "DICOMDIR-like.bin").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 20)
    volume = deepstd.read(tmp_path)  # non-images are ignored
    assert volume.size == (320, 320, 15)
    data = source[3].read_bytes()
    (tmp_path / source[3].name).write_bytes(data[: len(data) // 2])  # a truncated slice
    with pytest.raises(InputError, match=source[3].name):
        deepstd.read(tmp_path)
