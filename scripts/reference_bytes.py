"""Byte identity of the encoder: encode the reference scans and compare SHA-256s with a saved set.

A refactor must not change a single byte of any `.dstd` file. This codes one file per encoder path
(plain, lean header + pre-alignment-only shape code, widened frame, CT, CT coded along z first,
maximum error, keep mask, the demo's synthetic scan) and prints size, time and SHA-256 of each:

    python scripts/reference_bytes.py --save docs/bench/reference_bytes.json   # before a change
    python scripts/reference_bytes.py --check docs/bench/reference_bytes.json  # after it

`--check` exits 1 when any file differs. Real data from ../shared/data (about 4 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
HIPPO = DATA / "hippocampus_mr"
#: name -> (input, bundle, encode options); `demo` is the demo's unseen scan made from the la-mr template
CASES = {
    "demo-la-mr-128x": ("demo", "la-mr", {"ratio": 128}),
    "la-mr-128x": (DATA / "left_atrium_mr/images/LA_BXJWOUYP2J3EN4U92517.nii.gz", "la-mr", {"ratio": 128}),
    "hippocampus-64x": (HIPPO / "images/hippocampus_338.nii.gz", "hippocampus-mr", {"ratio": 64}),
    "hippocampus-256x-lean": (HIPPO / "images/hippocampus_338.nii.gz", "hippocampus-mr", {"ratio": 256}),
    "hippocampus-max-error-2": (HIPPO / "images/hippocampus_338.nii.gz", "hippocampus-mr", {"max_error": 2}),
    "hippocampus-keep-16x": (
        HIPPO / "images/hippocampus_338.nii.gz",
        "hippocampus-mr",
        {"ratio": 16, "keep": str(HIPPO / "labels/hippocampus_338.nii.gz") + ":2"},
    ),
    "prostate-64x-widened": (
        DATA / "prostate_mr/images/ProstateX-0000_t2_tse_cor.nii.gz",
        "prostate-t2",
        {"ratio": 64},
    ),
    "chest-ct-64x": (DATA / "ct/chest_ct_dicom", "ct-torso", {"ratio": 64}),
    # slices that repeat their detail: the layer coded along z first (refine section 9)
    "dicom-ct-512x-z-first": (DATA / "ct/abdomen/TotalSeg_example_ct_dicom_j2k", "ct-torso", {"ratio": 512}),
    # the learned texture, which the default replaces by the refinement layer alone where that is closer
    "la-mr-128x-texture": (
        DATA / "left_atrium_mr/images/LA_BXJWOUYP2J3EN4U92517.nii.gz",
        "la-mr",
        {"ratio": 128, "require_texture": True},
    ),
    "hippocampus-64x-texture": (
        HIPPO / "images/hippocampus_338.nii.gz",
        "hippocampus-mr",
        {"ratio": 64, "require_texture": True},
    ),
}


def encode_case(source, bundle: str, options: dict) -> bytes:
    from deepstd.codec import encode_file

    with tempfile.TemporaryDirectory() as folder:
        if source == "demo":
            from deepstd.bundle import load_bundle
            from deepstd.demo import unseen_scan
            from deepstd.io import write

            source = write(unseen_scan(load_bundle(bundle).template), Path(folder) / "demo.nii.gz")
        out = Path(folder) / "out.dstd"
        encode_file(source, out, bundle, device="cpu", **options)
        return out.read_bytes()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--save", type=Path, help="write the results as the reference set")
    parser.add_argument("--check", type=Path, help="compare with a saved reference set")
    parser.add_argument("--only", nargs="*", help="case names (default: all); with --save, only these are updated")
    args = parser.parse_args()
    reference = json.loads(args.check.read_text()) if args.check else {}
    results, differ = {}, []
    for name, (source, bundle, options) in CASES.items():
        if args.only and name not in args.only:
            continue
        started = time.perf_counter()
        data = encode_case(source, bundle, options)
        digest = hashlib.sha256(data).hexdigest()
        results[name] = {"bytes": len(data), "sha256": digest}
        verdict = ""
        if args.check:
            same = reference.get(name, {}).get("sha256") == digest
            verdict = "identical" if same else f"DIFFERENT (reference {reference.get(name)})"
            if not same:
                differ.append(name)
        print(
            f"{name:26s} {len(data):8d} B  {time.perf_counter() - started:6.1f} s  {digest[:16]}  {verdict}", flush=True
        )
    if args.save:
        kept = json.loads(args.save.read_text()) if args.only and args.save.exists() else {}
        args.save.write_text(json.dumps({**kept, **results}, indent=1) + "\n")
    if differ:
        print(f"{len(differ)} of {len(results)} files differ: {', '.join(differ)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
