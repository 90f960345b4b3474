"""Shape stage on real scans: the exported field reproduces our warp in SimpleITK; registration helps."""

from __future__ import annotations

import json

import numpy as np
import SimpleITK as sitk
import torch
from shared_data import data_path

from deepstd.shape import register_files

torch.set_num_threads(1)


def _check_equivalence(moving, labels, result, out_field, out_warped, tmp_path):
    """Resample(moving, template, DisplacementFieldTransform(field)) must equal our warped output."""
    field = sitk.ReadImage(str(out_field))
    assert field.GetNumberOfComponentsPerPixel() == 3
    tx = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
    template = sitk.ReadImage(result["template"])
    mov = sitk.Cast(sitk.ReadImage(str(moving)), sitk.sitkFloat32)
    ref = sitk.GetArrayFromImage(sitk.Resample(mov, template, tx, sitk.sitkLinear, 0.0))
    ours = sitk.GetArrayFromImage(sitk.ReadImage(str(out_warped))).astype(np.float32)
    # our file is written in the scan's integer type: allow the rounding, nothing more
    assert np.abs(ours - ref).max() <= 0.5 + 1e-3 * np.abs(ref).max()
    ref_l = sitk.GetArrayFromImage(
        sitk.Resample(sitk.ReadImage(str(labels)), template, tx, sitk.sitkNearestNeighbor, 0)
    )
    return ref_l


def test_hippocampus_registration_field_matches_simpleitk_and_improves_dice(tmp_path):
    root = data_path("hippocampus_mr")
    moving, template = root / "images/hippocampus_019.nii.gz", root / "images/hippocampus_056.nii.gz"
    labels, tlabels = root / "labels/hippocampus_019.nii.gz", root / "labels/hippocampus_056.nii.gz"
    out_w, out_f, js = tmp_path / "w.nii.gz", tmp_path / "f.nii.gz", tmp_path / "m.json"
    result = register_files(
        str(moving),
        str(template),
        str(out_w),
        str(out_f),
        str(js),
        moving_labels=str(labels),
        template_labels=str(tlabels),
        steps=150,
    )
    assert json.loads(js.read_text())["shape_code_bytes"] == result["shape_code_bytes"] < 4096
    assert result["dice"] > result["dice_before"] + 0.1
    assert result["folding_fraction"] < 0.01 and result["inverse_consistency_voxels"] < 1.0
    ref_l = _check_equivalence(moving, labels, result, out_f, out_w, tmp_path)
    tl = sitk.GetArrayFromImage(sitk.ReadImage(str(tlabels)))
    dice_sitk = np.mean([2 * np.sum((ref_l == k) & (tl == k)) / (np.sum(ref_l == k) + np.sum(tl == k)) for k in (1, 2)])
    assert abs(dice_sitk - result["dice"]) < 0.01  # labels warp the same way


def test_left_atrium_field_file_matches_simpleitk(tmp_path):
    root = data_path("left_atrium_mr")
    moving, template = root / "images/LA_1D7CUD1955YZPGK8XHJX.nii.gz", root / "images/LA_1GU15S0GJ6PFNARO469W.nii.gz"
    out_w, out_f = tmp_path / "w.nii.gz", tmp_path / "f.nii.gz"
    result = register_files(str(moving), str(template), str(out_w), str(out_f), steps=20)
    _check_equivalence(moving, root / "labels/LA_1D7CUD1955YZPGK8XHJX.nii.gz", result, out_f, out_w, tmp_path)
