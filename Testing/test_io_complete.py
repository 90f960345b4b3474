"""Inputs are complete or refused: truncated/corrupt image files, DICOM series with missing slices,
and folders whose series cannot be told apart are InputErrors, never zeros, shifted slices or guesses."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from shared_data import data_path

import deepstd
from deepstd import InputError
from deepstd.batch.discover import find_scans
from deepstd.io.dicom import SeriesChoiceError, list_series

HIPPOCAMPUS = "hippocampus_mr/images/hippocampus_011.nii.gz"


def _cuts(size):
    return sorted({0, 1, 9, 200, 600, size // 3, size // 2, size - 9, size - 5, size - 1})


def _flip(data: bytes, at: int) -> bytes:
    damaged = bytearray(data)
    damaged[at] ^= 0x5A
    return bytes(damaged)


@pytest.fixture(scope="module")
def hippocampus():
    return sitk.ReadImage(str(data_path(HIPPOCAMPUS)))


# --- image files --------------------------------------------------------------------------------
def test_truncated_nii_gz_is_refused_at_every_cut(tmp_path):
    data = data_path(HIPPOCAMPUS).read_bytes()
    original = deepstd.read(data_path(HIPPOCAMPUS))
    for cut in _cuts(len(data)):
        path = tmp_path / "cut.nii.gz"
        path.write_bytes(data[:cut])
        with pytest.raises(InputError, match=r"cut\.nii\.gz: cannot read image \((truncated|empty)") as caught:
            deepstd.read(path)
        assert "\n" not in str(caught.value)
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        InputError, match=r"truncated file: the gzip stream stops before its end \([\d,]+ of [\d,]+ bytes"
    ):
        deepstd.read(path)
    path.write_bytes(data)  # the untouched file still reads, voxel for voxel
    np.testing.assert_array_equal(deepstd.read(path).array, original.array)


@pytest.mark.parametrize("where", [0.3, 0.7, -6])  # deflate data, and the CRC-32/length trailer
def test_corrupt_gzip_byte_is_refused(tmp_path, where):
    data = data_path(HIPPOCAMPUS).read_bytes()
    path = tmp_path / "bad.nii.gz"
    path.write_bytes(_flip(data, int(len(data) * where) if where > 0 else len(data) + where))
    with pytest.raises(InputError, match=r"bad\.nii\.gz: cannot read image \(corrupt gzip data"):
        deepstd.read(path)


def test_complete_gzip_of_a_short_nifti_is_refused_and_multi_member_gzip_reads(tmp_path):
    raw = gzip.decompress(data_path(HIPPOCAMPUS).read_bytes())
    short = tmp_path / "short.nii.gz"
    short.write_bytes(gzip.compress(raw[:-100]))  # a valid gzip stream, but 100 voxel bytes short
    with pytest.raises(InputError, match=r"incomplete data: the gzip stream holds [\d,]+ bytes, the header declares"):
        deepstd.read(short)
    members = tmp_path / "members.nii.gz"  # what `cat a.gz b.gz` gives: valid gzip, read whole
    members.write_bytes(gzip.compress(raw[:5000]) + gzip.compress(raw[5000:]))
    reference = deepstd.read(data_path(HIPPOCAMPUS)).array
    np.testing.assert_array_equal(deepstd.read(members).array, reference)
    plain = tmp_path / "plain.nii.gz"  # not gzip at all: SimpleITK reads it, so do we (when complete)
    plain.write_bytes(raw)
    np.testing.assert_array_equal(deepstd.read(plain).array, reference)
    plain.write_bytes(raw[:-10])
    with pytest.raises(InputError, match="truncated file"):
        deepstd.read(plain)


@pytest.mark.parametrize("suffix", [".nii", ".nrrd", ".mha"])
def test_uncompressed_file_shorter_than_its_header_says_is_refused(tmp_path, hippocampus, suffix):
    path = tmp_path / f"u{suffix}"
    sitk.WriteImage(hippocampus, str(path), useCompression=False)
    data = path.read_bytes()
    for cut in (len(data) - 1, len(data) - 2000, len(data) // 2):
        path.write_bytes(data[:cut])
        with pytest.raises(InputError, match="truncated file: [\\d,]+ of the [\\d,]+ bytes the header declares"):
            deepstd.read(path)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_compressed_nrrd_and_mha_truncated_or_corrupt_are_refused(tmp_path, hippocampus, suffix):
    path = tmp_path / f"c{suffix}"
    sitk.WriteImage(hippocampus, str(path), useCompression=True)
    data = path.read_bytes()
    expected = sitk.GetArrayFromImage(hippocampus)
    np.testing.assert_array_equal(deepstd.read(path).array, expected)
    kind = "gzip" if suffix == ".nrrd" else "zlib"
    for cut in (len(data) - 1, len(data) - 4, len(data) * 2 // 3, len(data) // 3, 700):
        path.write_bytes(data[:cut])
        with pytest.raises(InputError, match=rf"c{suffix}: cannot read image \(truncated file"):
            deepstd.read(path)
    for at in (len(data) // 2, len(data) - 2):  # SimpleITK reads both of these with wrong voxels
        path.write_bytes(_flip(data, at))
        with pytest.raises(InputError, match=rf"corrupt {kind} data"):
            deepstd.read(path)


@pytest.mark.parametrize("compress, data_name", [(True, "s.zraw"), (False, "s.raw")])
def test_mhd_with_short_data_file_is_refused(tmp_path, hippocampus, compress, data_name):
    header = tmp_path / "s.mhd"
    sitk.WriteImage(hippocampus, str(header), useCompression=compress)
    data_file = tmp_path / data_name
    data = data_file.read_bytes()
    data_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"s\.mhd: cannot read image \(truncated file"):
        deepstd.read(header)
    data_file.write_bytes(_flip(data, len(data) // 2))
    if compress:
        with pytest.raises(InputError, match="corrupt zlib data"):
            deepstd.read(header)
    data_file.unlink()
    with pytest.raises(InputError, match=f"its data file {data_name} is missing"):
        deepstd.read(header)


# --- DICOM: missing slices ----------------------------------------------------------------------
def _copy_series(source, target):
    target.mkdir()
    for file in sorted(source.iterdir()):
        shutil.copyfile(file, target / file.name)
    return target


def _by_position(folder):
    """(position along the normal, file) for every slice, in slice order."""
    rows = []
    for file in sorted(folder.iterdir()):
        ds = pydicom.dcmread(file, stop_before_pixels=True)
        iop = np.asarray(ds.ImageOrientationPatient, float)
        normal = np.cross(iop[:3], iop[3:])
        rows.append((float(np.dot(np.asarray(ds.ImagePositionPatient, float), normal)), file))
    return sorted(rows)


@pytest.fixture(scope="module")
def chest(tmp_path_factory):
    folder = data_path("ct/chest_ct_dicom")
    return folder, deepstd.read(folder), _by_position(folder)


def test_dicom_slice_replaced_by_junk_is_refused_naming_the_gap(tmp_path, chest):
    folder, original, slices = chest
    copy = _copy_series(folder, tmp_path / "gap")
    (copy / slices[10][1].name).write_bytes(b"not a DICOM file\n" * 50)
    z_before, z_after = slices[9][0], slices[11][0]
    message = (
        rf"1 missing slice\(s\) between z = {z_before:.1f} and {z_after:.1f} mm \(spacing 5\.0 mm\); "
        r"a series with a gap is refused"
    )
    with pytest.raises(InputError, match=message) as caught:
        deepstd.read(copy)
    assert str(caught.value).startswith(str(copy)) and "\n" not in str(caught.value)

    filled = deepstd.read(copy, allow_gaps=True)
    assert filled.size == original.size == (512, 512, 64)
    assert (filled.spacing, filled.origin, filled.direction) == (original.spacing, original.origin, original.direction)
    present = [k for k in range(64) if k != 10]
    np.testing.assert_array_equal(filled.array[present], original.array[present])  # exactly the original slices
    np.testing.assert_array_equal(filled.array[10], np.rint((original.array[9] + original.array[11]) / 2.0))
    assert filled.dtype == original.dtype
    assert any("1 missing slice(s)" in w and "interpolated linearly" in w for w in filled.meta["warnings"])


def test_several_missing_slices_are_refused_and_interpolated_on_request(tmp_path):
    source = data_path("dicom_edge/unsigned_12bit")
    original = deepstd.read(source)
    slices = _by_position(source)
    copy = _copy_series(source, tmp_path / "gaps")
    for k in (4, 5, 11):  # two adjacent slices missing, and one more further on
        (copy / slices[k][1].name).unlink()
    axis = "position \\(along the slice normal\\)"  # a coronal series: the normal is not z
    with pytest.raises(
        InputError, match=rf"3 missing slice\(s\) between {axis} = .* mm, between .* \(spacing 3\.0 mm\)"
    ):
        deepstd.read(copy)
    filled = deepstd.read(copy, allow_gaps=True)
    assert filled.size == original.size and filled.spacing == pytest.approx(original.spacing, abs=1e-9)
    np.testing.assert_allclose(filled.origin, original.origin, atol=1e-9)
    present = [k for k in range(15) if k not in (4, 5, 11)]
    np.testing.assert_array_equal(filled.array[present], original.array[present])
    a, b = original.array[3].astype(np.float64), original.array[6].astype(np.float64)
    np.testing.assert_array_equal(filled.array[4], np.rint(a + (b - a) / 3))
    np.testing.assert_array_equal(filled.array[5], np.rint(a + 2 * (b - a) / 3))


def test_more_missing_slices_than_present_are_refused_even_with_allow_gaps(tmp_path):
    source = data_path("dicom_edge/unsigned_12bit")
    copy = _copy_series(source, tmp_path / "sparse")
    for _, file in _by_position(source)[5:14]:  # keep slices 0-4 and 14: 9 missing, 6 present
        (copy / file.name).unlink()
    with pytest.raises(InputError, match=r"9 missing slice\(s\) .*more slices missing than present \(6\)"):
        deepstd.read(copy, allow_gaps=True)


def _shift_slice(folder, file, shift_mm):
    """Move one slice `shift_mm` along the slice normal (re-stored as DS with 6 decimals)."""
    ds = pydicom.dcmread(file)
    iop = np.asarray(ds.ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    ds.ImagePositionPatient = [f"{v:.6f}" for v in np.asarray(ds.ImagePositionPatient, float) + shift_mm * normal]
    ds.save_as(folder / file.name)


def test_small_jitter_reads_large_irregularity_is_refused(tmp_path):
    source = data_path("dicom_edge/unsigned_12bit")  # 3.0 mm spacing
    slices = _by_position(source)
    original = deepstd.read(source)
    for shift, outcome in ((0.01, "silent"), (0.2, "warned"), (0.45, "refused"), (1.5, "refused")):
        copy = _copy_series(source, tmp_path / f"shift{shift}")
        _shift_slice(copy, slices[7][1], shift)
        if outcome == "refused":
            with pytest.raises(InputError, match=r"irregular slice spacing \(steps .* mm\).*refused"):
                deepstd.read(copy, allow_gaps=True)  # not a gap: allow_gaps does not help
            continue
        volume = deepstd.read(copy)
        assert volume.size == original.size
        np.testing.assert_array_equal(volume.array, original.array)
        warned = [w for w in volume.meta["warnings"] if "irregular slice spacing" in w]
        assert bool(warned) == (outcome == "warned")


# --- DICOM: which series ------------------------------------------------------------------------
def test_two_series_of_the_same_size_are_refused_listing_both(tmp_path):
    folder = data_path("dicom_edge/multi_series")
    series = list_series(folder)
    assert len(series) == 2 and series[0].voxels == series[1].voxels
    with pytest.raises(SeriesChoiceError) as caught:
        deepstd.read(folder)
    message = str(caught.value)
    assert isinstance(caught.value, InputError) and "\n" not in message
    assert "2 series found, 2 of the same size (512x512x5); choose one with series_uid" in message
    for s in series:
        assert s.uid in message and "B40f" in message and "B70f" in message
    assert message.count("(CT 512x512x5, 5 files") == 2
    assert [s.uid for s in caught.value.series] == [s.uid for s in series]
    for s in series:
        picked = deepstd.read(folder, series_uid=s.uid)
        assert picked.size == (512, 512, 5) and picked.meta["series_uid"] == s.uid
        assert picked.meta["dicom"]["SeriesDescription"] == s.description


def test_series_of_different_sizes_read_the_largest_with_a_warning(tmp_path):
    copy = _copy_series(data_path("dicom_edge/multi_series"), tmp_path / "uneven")
    b40 = [row for row in _by_position(copy) if row[1].name.startswith("B40f_")]
    b40[-1][1].unlink()  # the B40f series loses its last slice: 4 slices, no gap
    volume = deepstd.read(copy)
    assert volume.size == (512, 512, 5) and "B70f" in volume.meta["dicom"]["SeriesDescription"]
    assert any("2 series found; read the largest" in w for w in volume.meta["warnings"])


def test_same_size_series_without_uids_are_refused_and_selectable_by_key(tmp_path):
    """Two UID-less series (grouped by study): refused together, each readable by its key, and
    batch discovery gives each its own key so a batch reads both."""
    source = data_path("dicom_edge/no_series_uid")
    root = tmp_path / "collection"
    folder = root / "dicom"
    folder.mkdir(parents=True)
    other_study = pydicom.uid.generate_uid()
    for file in sorted(source.iterdir()):
        shutil.copyfile(file, folder / f"a_{file.name}")
        ds = pydicom.dcmread(file)
        ds.StudyInstanceUID = other_study  # the same slices again, filed under another study
        ds.save_as(folder / f"b_{file.name}")
    series = list_series(folder)
    assert len(series) == 2 and all(not s.uid for s in series)
    with pytest.raises(InputError, match="2 of the same size .*no-uid"):
        deepstd.read(folder)
    reference = deepstd.read(source)
    for s in series:
        np.testing.assert_array_equal(deepstd.read(folder, series_uid=s.key).array, reference.array)
    _, scans = find_scans(root)
    assert sorted(scan.series_uid for scan in scans) == sorted(s.key for s in series)
    for scan in scans:
        task = scan.task()
        assert deepstd.read(task["source"], series_uid=task["series_uid"]).size == (320, 320, 15)


def test_batch_discovery_gives_each_same_size_series_its_uid(tmp_path):
    root = tmp_path / "collection"
    root.mkdir()
    _copy_series(data_path("dicom_edge/multi_series"), root / "multi")
    _, scans = find_scans(root)
    uids = {s.uid for s in list_series(root / "multi")}
    assert {scan.series_uid for scan in scans} == uids and len(scans) == 2
    for scan in scans:
        assert deepstd.read(scan.source, series_uid=scan.series_uid).meta["series_uid"] == scan.series_uid


def test_encode_file_passes_allow_gaps_to_read(tmp_path, monkeypatch):
    from deepstd.codec import files

    source = data_path("dicom_edge/unsigned_12bit")
    copy = _copy_series(source, tmp_path / "gap")
    (copy / _by_position(source)[6][1].name).unlink()
    with pytest.raises(InputError, match=r"1 missing slice\(s\)"):
        files.encode_file(copy, tmp_path / "out.dstd", bundle=None)

    class Reached(Exception):
        pass

    def fake_encode(volume, *args, **kw):
        raise Reached(volume.size)

    monkeypatch.setattr(files, "encode", fake_encode)
    with pytest.raises(Reached) as reached:
        files.encode_file(copy, tmp_path / "out.dstd", bundle=None, allow_gaps=True)
    assert reached.value.args[0] == (320, 320, 15)
    assert not (tmp_path / "out.dstd").exists()


def test_zlib_check_is_streamed_not_loaded(tmp_path):
    """A large, highly compressible volume is checked in bounded pieces (and quickly)."""
    import time
    import tracemalloc

    big = sitk.Image(512, 512, 200, sitk.sitkInt16)  # 100 MiB of zeros -> ~100 KiB of gzip
    path = tmp_path / "big.nii.gz"
    sitk.WriteImage(big, str(path), useCompression=True)
    from deepstd.io.integrity import check_image_file

    tracemalloc.start()
    started = time.perf_counter()
    check_image_file(path)
    seconds = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 32 * 2**20 and seconds < 10
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(InputError, match="truncated file"):
        check_image_file(path)
