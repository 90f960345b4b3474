"""`deepstd encode SERIES OUT.dcm --dicom-object` and `deepstd decode OUT.dcm FOLDER`, end to end."""

from __future__ import annotations

import numpy as np
import pytest
from shared_data import data_path

from deepstd import codec
from deepstd.cli import main
from deepstd.dicom_object import is_deepstd_object, unwrap
from deepstd.io import read


@pytest.mark.usefixtures("one_thread")
def test_a_series_round_trips_through_a_deepstd_object(tmp_path, capsys):
    scan = data_path("hippocampus_mr/images/hippocampus_338.nii.gz")
    series = tmp_path / "series"
    assert main(["convert", str(scan), str(series)]) == 0  # a DICOM series to start from
    obj = tmp_path / "out.dcm"
    assert main(["encode", str(series), str(obj), "--bundle", "hippocampus-mr", "--ratio", "64", "--dicom-object"]) == 0
    assert is_deepstd_object(obj)
    restored = tmp_path / "restored"
    assert main(["decode", str(obj), str(restored)]) == 0
    decoded, original = read(restored), read(series)
    assert decoded.size == original.size and np.allclose(decoded.origin, original.origin)
    np.testing.assert_array_equal(decoded.array, codec.decode(unwrap(obj)).array)  # exactly the stored file
    assert (
        main(["decode", str(tmp_path / "series" / sorted(p.name for p in series.iterdir())[0]), str(tmp_path / "x")])
        == 2
    )
    assert "not a DeepSTD object" in capsys.readouterr().err
