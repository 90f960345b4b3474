"""End-to-end codec: exact rate control, exact geometry, refusals, corrupt files, determinism, CLI.

A tiny bundle (synthetic template, untrained small texture network, short registration) keeps
these fast; what they check — budgets, grids, dtypes, errors — does not depend on training.
The shipped `la-mr` bundle on a real held-out scan is checked in test_codec_real.py.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from codec_helpers import FAST_REGISTRATION

from deepstd import codec
from deepstd.bundle import TextureCoding, find_bundle, load_bundle, save_bundle
from deepstd.codec.header import DECODE_KEYS, HEADER_SHARE, LEAN_BUNDLE_ID, DstdHeader
from deepstd.container import pack, unpack
from deepstd.demo import unseen_scan
from deepstd.errors import BudgetError, BundleError, Cancelled, DeepSTDError, FormatError, InputError
from deepstd.progress import CancelEvent

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def coded(tiny_bundle, scan):
    return codec.encode(scan, tiny_bundle, ratio=24, device="cpu", require_texture=True)


def test_decoded_volume_has_exactly_the_original_grid_and_dtype(tiny_bundle, scan, coded):
    out = codec.decode(coded, tiny_bundle, device="cpu")
    assert out.array.shape == scan.array.shape
    assert out.spacing == scan.spacing and out.origin == scan.origin and out.direction == scan.direction
    assert out.dtype == "int16" and out.units == scan.units
    assert np.array_equal(out.array, np.rint(out.array))  # integer values of the dtype
    assert out.array.min() >= -32768 and out.array.max() <= 32767


def test_shape_path_round_trip_restores_the_scan(tiny_bundle, scan):
    """Without texture loss, into the template frame and back (through the *decoded* shape code)
    gives the scan again where the template covers it: the geometry of both warps is right."""
    from deepstd.alignment import from_template, intensity_map, into_template, texture_frame
    from deepstd.grid import Frame
    from deepstd.shape import CycleSettings, decode_shape, register

    reg = register(scan, tiny_bundle.template, CycleSettings(**FAST_REGISTRATION))
    mapping = intensity_map(scan.array)
    frame, margin = texture_frame(reg.frame)
    assert frame.size == tuple(n + 2 * m for n, m in zip(reg.frame.size, margin))
    unit, support = into_template(
        scan,
        decode_shape(reg.shape_code(8)).backward,
        decode_shape(reg.shape_code(8)).matrix,
        reg.frame,
        frame,
        mapping,
    )
    assert 0.2 < support.mean() < 1.0
    code = decode_shape(reg.shape_code(8))
    back, coverage = from_template(unit, reg.frame, frame, code.backward, code.matrix, Frame.of(scan), mapping)
    assert coverage > 0.99
    inside = scan.array > 0.2 * scan.array.max()
    assert np.corrcoef(back[inside], scan.array[inside])[0, 1] > 0.98


@pytest.mark.parametrize("ratio", [20, 32, 48])
def test_file_never_exceeds_the_budget_and_lands_within_two_percent(tiny_bundle, scan, ratio):
    data = codec.encode(scan, tiny_bundle, ratio=ratio, device="cpu", require_texture=True)
    budget = scan.raw_bytes // ratio
    assert len(data) <= budget
    assert len(data) >= 0.98 * budget, f"{len(data)} of {budget}"
    header = unpack(data).header
    assert tiny_bundle.sha256.startswith(header["bundle"]["sha256"])
    assert header.get("budget_bytes", budget) == budget


def test_the_header_is_lean_only_where_it_would_eat_the_budget(tiny_bundle, scan):
    from deepstd.container import header_cost

    data = codec.encode(scan, tiny_bundle, budget_bytes=1000, device="cpu", require_texture=True)
    small = unpack(data)
    full = dict(
        small.header,
        bundle={"name": tiny_bundle.name, "sha256": tiny_bundle.sha256},
        budget_bytes=1000,
        target_ratio=round(scan.raw_bytes / 1000, 4),
        encoder_version="0.1.0",
        codec=dict(small.header["codec"], omega=12.0, shape_width=4, shape_bits=8, texture_rate=0),
    )
    assert header_cost(full) > HEADER_SHARE * 1000
    typed = DstdHeader.from_dict(full)
    assert typed.to_dict() == full  # the typed header writes the same JSON
    assert small.header == typed.lean().to_dict()  # only what decoding needs
    assert set(small.header) <= set(DECODE_KEYS) | {"bundle", "codec"}
    assert len(small.header["bundle"]["sha256"]) == LEAN_BUNDLE_ID
    roomy = replace(typed, budget_bytes=100_000)
    assert roomy.fitted() == roomy
    decoded = codec.decode(data, tiny_bundle)
    assert len(data) <= 1000 and decoded.size == scan.size and decoded.direction == scan.direction
    # no room for even a 4-wide network at 12 % of 1000 bytes: the shape code is the pre-alignment alone
    from deepstd.shape.code import PREALIGNMENT_BYTES

    assert len(small.sections["shape"]) <= PREALIGNMENT_BYTES
    with pytest.raises(BundleError, match="coded with bundle"):
        find_bundle(None, "0" * LEAN_BUNDLE_ID, tiny_bundle)
    with pytest.raises(FormatError, match="bundle id"):
        DstdHeader.from_dict(dict(small.header, bundle={"sha256": "abc"}))


def test_budget_beyond_the_finest_rate_goes_to_the_refinement_layer(tiny_bundle, scan):
    from deepstd import refine

    budget = scan.raw_bytes // 4
    data = codec.encode(scan, tiny_bundle, ratio=4, device="cpu", require_texture=True)
    parsed = unpack(data)
    assert 0.98 * budget <= len(data) <= budget and refine.SECTION in parsed.sections
    assert not any("finest texture rate" in w for w in parsed.header.get("warnings", []))
    refined = codec.decode(data, tiny_bundle)
    error = lambda decoded: float(np.sqrt(np.mean((decoded.array - scan.array) ** 2)))  # noqa: E731
    box = ((3, 4, 2), (30, 25, 11))  # a region of a refined file is the crop of the whole decode
    region = codec.decode(data, tiny_bundle, roi=box)
    np.testing.assert_array_equal(region.array, refined.array[2:11, 4:25, 3:30])
    # the layer is what brings the file closer: the same file without it decodes farther
    texture_alone = pack(parsed.header, {k: v for k, v in parsed.sections.items() if k != refine.SECTION})
    assert error(refined) < 0.8 * error(codec.decode(texture_alone, tiny_bundle))


def test_a_bundle_whose_texture_span_ends_early_refines_past_it(tiny_bundle, scan, tmp_path):
    from deepstd import refine
    from deepstd.bundle import TextureCoding
    from deepstd.texture import TextureCodec, TextureStreams

    budget = scan.raw_bytes // 24  # the full span's texture alone fills it (test above), above 0.5
    plain = codec.encode(scan, tiny_bundle, budget_bytes=budget, device="cpu", require_texture=True)
    full = TextureStreams.from_bytes(unpack(plain).sections["texture"]).rate_q
    assert refine.SECTION not in unpack(plain).sections and full > round(0.4 * 65535)
    early = load_bundle(
        save_bundle(
            tmp_path / "early.dstdb",
            replace(tiny_bundle.config, texture=TextureCoding(tiny_bundle.config.texture.block, (0.0, 0.4))),
            tiny_bundle.template,
            texture=tiny_bundle.texture,
        )
    )
    assert "texture rates to 0.4 then refined" in early.describe()
    data = codec.encode(scan, early, budget_bytes=budget, device="cpu", require_texture=True)
    parsed = unpack(data)
    assert 0.98 * budget <= len(data) <= budget and refine.SECTION in parsed.sections
    assert TextureStreams.from_bytes(parsed.sections["texture"]).rate_q == round(0.4 * 65535)
    # a budget the texture fills inside the span: the very file of the whole span
    whole = unpack(codec.encode(scan, tiny_bundle, budget_bytes=800, device="cpu", require_texture=True)).sections
    assert TextureStreams.from_bytes(whole["texture"]).rate_q < round(0.9 * 65535)
    wide = replace(tiny_bundle.config, texture=TextureCoding(tiny_bundle.config.texture.block, (0.0, 0.9)))
    wide_bundle = load_bundle(
        save_bundle(tmp_path / "wide.dstdb", wide, tiny_bundle.template, texture=tiny_bundle.texture)
    )
    assert (
        unpack(codec.encode(scan, wide_bundle, budget_bytes=800, device="cpu", require_texture=True)).sections == whole
    )
    # a keep mask's residual takes the spare bytes instead of a refinement layer: the whole span again
    lesion = np.zeros(scan.array.shape, dtype=np.float32)
    lesion[5:8, 10:15, 10:15] = 1
    keep = scan.with_array(lesion, dtype="uint8")
    kept = [
        unpack(
            codec.encode(scan, b, budget_bytes=budget, keep=keep, keep_error=20, device="cpu", require_texture=True)
        ).sections
        for b in (early, tiny_bundle)
    ]
    assert kept[0] == kept[1] and refine.SECTION not in kept[0]
    assert TextureStreams.from_bytes(kept[0]["texture"]).rate_q > round(0.4 * 65535)  # past the span's end
    # ... and so does the latent search's refit (effort 2), which would otherwise stop at 0.4
    levels = TextureCodec.from_bytes(tiny_bundle.texture).config.levels
    stated = {"train_settings": {"lambdas": [4.0**k for k in range(levels)]}}
    searched = [
        unpack(
            codec.encode(
                scan,
                load_bundle(
                    save_bundle(
                        tmp_path / f"s{k}.dstdb", replace(b.config, training=stated), b.template, texture=b.texture
                    )
                ),
                budget_bytes=budget,
                keep=keep,
                keep_error=20,
                device="cpu",
                effort=2,
                require_texture=True,
            )
        ).sections
        for k, b in enumerate((early, tiny_bundle))
    ]
    assert searched[0] == searched[1]
    assert TextureStreams.from_bytes(searched[0]["texture"]).rate_q > round(0.4 * 65535)


def test_byte_budget_option(tiny_bundle, scan):
    data = codec.encode(scan, tiny_bundle, budget_bytes=2000, device="cpu", require_texture=True)
    assert 0.98 * 2000 <= len(data) <= 2000


def test_infeasible_budget_states_the_largest_feasible_ratio(tiny_bundle, scan):
    with pytest.raises(BudgetError, match=r"largest feasible ratio is \d+x"):
        codec.encode(scan, tiny_bundle, ratio=5000, device="cpu", require_texture=True)
    with pytest.raises(InputError, match="exactly one"):
        codec.encode(scan, tiny_bundle, device="cpu", require_texture=True)
    with pytest.raises(InputError, match="ratio"):
        codec.encode(scan, tiny_bundle, ratio=0.5, device="cpu", require_texture=True)


def test_other_bundle_is_refused_and_missing_bundle_named(tiny_bundle, coded, tmp_path):
    other = load_bundle(
        save_bundle(
            tmp_path / "other.dstdb",
            replace(tiny_bundle.config, name="other"),
            tiny_bundle.template,
            texture=tiny_bundle.texture,
        )
    )
    with pytest.raises(BundleError, match="coded with bundle 'tiny'"):
        codec.decode(coded, other)
    with pytest.raises(BundleError, match="not installed"):
        codec.decode(coded)


def test_cancel_raises_and_progress_reaches_the_end(tiny_bundle, scan):
    token = CancelEvent()
    token.set()
    with pytest.raises(Cancelled):
        codec.encode(scan, tiny_bundle, ratio=24, device="cpu", cancel=token, require_texture=True)
    events = []
    codec.encode(scan, tiny_bundle, ratio=24, device="cpu", progress=events.append, require_texture=True)
    stages = [e.stage for e in events]
    assert stages[0] == "register" and "texture" in stages and stages[-1] == "write"
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_modality_mismatch_is_recorded_as_a_warning(tiny_bundle, scan):
    ct = scan.with_array(scan.array - 1000, units="HU")
    header = unpack(codec.encode(ct, tiny_bundle, ratio=24, device="cpu", require_texture=True)).header
    assert any("modality" in w for w in header["warnings"])


def test_corrupt_files_only_raise_deepstd_errors(tiny_bundle, coded):
    """Truncations, bit flips, and mutated sections re-packed with valid CRCs (crafted files)."""
    rng = np.random.default_rng(0)
    parsed = unpack(coded)
    outcomes = {"decoded": 0, "refused": 0}
    candidates = [coded[:n] for n in rng.integers(0, len(coded), 25)]
    for _ in range(25):
        flipped = bytearray(coded)
        flipped[rng.integers(len(coded))] ^= 1 << int(rng.integers(8))
        candidates.append(bytes(flipped))
    for _ in range(30):
        name = ["shape", "texture"][int(rng.integers(2))]
        payload = bytearray(parsed.sections[name])
        for _ in range(int(rng.integers(1, 4))):
            payload[rng.integers(len(payload))] = int(rng.integers(256))
        candidates.append(pack(parsed.header, dict(parsed.sections, **{name: bytes(payload)})))
    bad_headers = [
        dict(parsed.header, intensity={"lo": 5, "hi": 1}),
        {k: v for k, v in parsed.header.items() if k != "intensity"},
    ]
    candidates += [pack(h, parsed.sections) for h in bad_headers]
    candidates.append(pack(parsed.header, {"shape": parsed.sections["shape"]}))
    for data in candidates:
        try:
            out = codec.decode(data, tiny_bundle, device="cpu")
            assert out.array.shape == (17, 37, 44)
            outcomes["decoded"] += 1
        except (FormatError, BundleError):
            outcomes["refused"] += 1
    assert outcomes["refused"] >= 50, outcomes


DECODE_IN_FRESH_PROCESS = """
import sys, numpy as np, torch
torch.set_num_threads(int(sys.argv[3]))
from deepstd import codec
out = codec.decode(open(sys.argv[1], 'rb').read(), sys.argv[2], device='cpu')
np.save(sys.argv[4], out.array)
"""


def test_decode_is_bit_identical_across_threads_and_processes(tiny_bundle, coded, tmp_path):
    file = tmp_path / "scan.dstd"
    file.write_bytes(coded)
    reference = codec.decode(coded, tiny_bundle, device="cpu").array
    for threads in (1, 2):
        out = tmp_path / f"out{threads}.npy"
        subprocess.run(
            [sys.executable, "-c", DECODE_IN_FRESH_PROCESS, str(file), str(tiny_bundle.path), str(threads), str(out)],
            check=True,
        )
        assert np.array_equal(np.load(out), reference), f"{threads} threads in a fresh process differ"


def test_encoding_is_reproducible(tiny_bundle, scan, coded):
    assert codec.encode(scan, tiny_bundle, ratio=24, device="cpu", require_texture=True) == coded


def test_cli_encode_decode_and_errors(tiny_bundle, scan, tmp_path, capsys):
    from deepstd.cli import main
    from deepstd.io import read, write

    source = write(scan, tmp_path / "scan.nrrd")
    dstd = tmp_path / "scan.dstd"
    assert main(["encode", str(source), str(dstd), "--bundle", str(tiny_bundle.path), "--ratio", "24"]) == 0
    assert "24" in capsys.readouterr().out
    restored = tmp_path / "restored.nii.gz"
    assert main(["decode", str(dstd), str(restored), "--bundle", str(tiny_bundle.path)]) == 0
    back = read(restored)
    assert back.size == scan.size and np.allclose(back.direction, scan.direction) and back.dtype == "int16"
    dicom = tmp_path / "restored_dicom"
    assert main(["decode", str(dstd), str(dicom), "--bundle", str(tiny_bundle.path)]) == 0
    series = read(dicom)
    assert series.size == scan.size and np.allclose(series.spacing, scan.spacing, atol=1e-4)
    import pydicom

    first = pydicom.dcmread(sorted(dicom.iterdir())[0])
    assert first.LossyImageCompression == "01" and float(first.LossyImageCompressionRatio) > 20

    # refusals: one line, exit 2, no output file
    capsys.readouterr()
    bad = tmp_path / "bad.dstd"
    assert main(["encode", str(source), str(bad), "--bundle", str(tiny_bundle.path), "--ratio", "9000"]) == 2
    assert not bad.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("deepstd: error:") and "largest feasible ratio" in err[-1]
    broken = tmp_path / "broken.dstd"
    broken.write_bytes(dstd.read_bytes()[:-7])
    out = tmp_path / "never.nii.gz"
    assert main(["decode", str(broken), str(out), "--bundle", str(tiny_bundle.path)]) == 2
    assert not out.exists()
    assert "Traceback" not in capsys.readouterr().err
    assert main(["encode", str(source), str(bad), "--bundle", "no-such-bundle", "--ratio", "24"]) == 2
    assert "not found" in capsys.readouterr().err


def test_every_error_is_a_deepstd_error():
    for cls in (BudgetError, BundleError, Cancelled, FormatError, InputError):
        assert issubclass(cls, DeepSTDError)


def test_demo_scan_is_unseen_but_on_the_template_grid(tiny_bundle):
    made = unseen_scan(tiny_bundle.template, seed=2)
    assert made.same_grid(tiny_bundle.template) and made.dtype == tiny_bundle.template.dtype
    assert not np.array_equal(made.array, tiny_bundle.template.array)


def test_bench_runs_deepstd_and_a_peer_resumably(tiny_bundle, scan, tmp_path):
    from deepstd import bench
    from deepstd.io import write

    source = write(scan, tmp_path / "scan.nii.gz")
    out = tmp_path / "results.jsonl"
    peers = ["sperr3d", "zstd-lossless", "deepstd-texture"]
    first = bench.run([source], tiny_bundle, out, ratios=[24], peer_names=peers)
    codecs = {r["codec"]: r for r in first}
    assert set(codecs) == {"deepstd", "sperr3d", "zstd-lossless", "deepstd-texture"}
    assert codecs["deepstd"]["status"] == "ok" and codecs["deepstd"]["bytes"] <= scan.raw_bytes // 24
    assert codecs["zstd-lossless"]["status"] in ("unreachable", "unavailable")
    # the learned texture alone, and the default, which keeps it only where it decodes closer
    assert "texture" in codecs["deepstd-texture"]["layers"]
    assert codecs["deepstd"]["psnr"] >= codecs["deepstd-texture"]["psnr"]
    assert ("texture" in codecs["deepstd"]["layers"]) == (
        codecs["deepstd"]["psnr"] == codecs["deepstd-texture"]["psnr"]
    )
    assert bench.run([source], tiny_bundle, out, ratios=[24], peer_names=peers) == []
    table = bench.summary(bench.load(out))
    assert "| deepstd |" in table and "24×" in table
    assert (
        "deepstd-texture: files that hold the learned texture (the rest: the refinement layer alone): 1/1 at 24×"
        in table
    )


def test_output_bytes_do_not_depend_on_the_worker_count(tiny_bundle, scan, coded):
    for workers in (1, 2):
        assert codec.encode(scan, tiny_bundle, ratio=24, device="cpu", workers=workers, require_texture=True) == coded


def test_a_one_block_frame_is_coded_whole_on_the_smallest_frame_that_covers(tiny_bundle, scan, tmp_path):
    from deepstd.alignment import compact_frame
    from deepstd.codec.decoder import coded_frame
    from deepstd.grid import Frame
    from deepstd.texture import TextureStreams

    template = Frame((41, 47, 42), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    # coverage grows with the margin until 3 voxels on x and z, whatever y has
    covered = lambda f: min(1.0, 0.9 + 0.1 * min(f.size[0] - 41, f.size[2] - 42) / 6)  # noqa: E731
    frame, margin = compact_frame(template, [8, 8, 8], covered)
    assert margin == [3, 0, 3] and frame.size == (47, 47, 48)
    frame, margin = compact_frame(template, [8, 8, 8], lambda f: 1.0 - 1e-3 * (64**3 - np.prod(f.size)) / 1e4)
    assert margin == [8, 8, 8]  # every smaller frame loses coverage: keep the default
    one_block = load_bundle(
        save_bundle(
            tmp_path / "one.dstdb",
            replace(tiny_bundle.config, texture=TextureCoding(64)),
            tiny_bundle.template,
            texture=tiny_bundle.texture,
        )
    )
    data = codec.encode(scan, one_block, ratio=24, device="cpu", require_texture=True)
    parsed = unpack(data)
    streams = TextureStreams.from_bytes(parsed.sections["texture"])
    # the compact frame, resampled where the scan is finer than the template (0.9 mm against 1 mm here)
    assert streams.full and max(streams.block) <= 64
    header = DstdHeader.from_dict(parsed.header)
    assert header.codec.frame_size is not None
    assert tuple(streams.shape) == coded_frame(header, Frame.of(one_block.template)).shape_zyx
    decoded = codec.decode(data, one_block)
    assert (decoded.size, decoded.spacing, decoded.origin, decoded.direction) == (
        scan.size,
        scan.spacing,
        scan.origin,
        scan.direction,
    )


def test_every_warning_in_the_header_dictionary_still_matches_it():
    """The preset dictionary holds the warnings' words; a reworded warning would change file sizes
    silently. Rewording one needs a new dictionary, i.e. a new format minor version (FORMAT.md)."""
    import re

    from deepstd.codec.encoder import COVERAGE_WARNING, FINEST_RATE_WARNING
    from deepstd.container import HEADER_DICTIONARY
    from deepstd.shape.sizing import UNLIKE_TEMPLATE_WARNING

    dictionary = HEADER_DICTIONARY.decode()
    for template in (FINEST_RATE_WARNING, COVERAGE_WARNING, UNLIKE_TEMPLATE_WARNING):
        literal = re.sub(r"\{[^}]*\}", " ", template)
        missing = [word for word in re.findall(r"[A-Za-z']{3,}", literal) if word not in dictionary]
        assert not missing, f"{template[:40]}…: {missing} not in the header dictionary"


def test_effort_one_keeps_the_closer_of_texture_alone_and_texture_plus_refinement(tiny_bundle, scan):
    from deepstd import refine
    from deepstd.codec.encoder import SPLIT_RATE
    from deepstd.texture import TextureStreams

    budget = scan.raw_bytes // 24  # the texture alone fills it, above SPLIT_RATE
    plain = codec.encode(scan, tiny_bundle, budget_bytes=budget, device="cpu", require_texture=True)
    assert refine.SECTION not in unpack(plain).sections
    tried = codec.encode(scan, tiny_bundle, budget_bytes=budget, device="cpu", effort=1, require_texture=True)
    assert len(plain) <= budget and len(tried) <= budget
    error = lambda data: float(np.mean((codec.decode(data, tiny_bundle).array - scan.array) ** 2))  # noqa: E731
    assert error(tried) <= error(plain)  # effort 1 measured both and kept the closer one
    texture = TextureStreams.from_bytes(unpack(plain).sections["texture"])
    if refine.SECTION in unpack(tried).sections:  # the split's texture sits at SPLIT_RATE
        split = TextureStreams.from_bytes(unpack(tried).sections["texture"])
        assert split.rate_q == round(SPLIT_RATE * 65535) < texture.rate_q
    with pytest.raises(InputError, match="effort"):
        codec.encode(scan, tiny_bundle, ratio=8, device="cpu", effort=3)


def test_effort_two_searches_latents_and_keeps_the_closer_file(tiny_bundle, scan, tmp_path, monkeypatch):
    from deepstd.texture import TextureCodec, latent_search

    calls = []
    search = latent_search.search_latents
    monkeypatch.setattr(latent_search, "search_latents", lambda *a, **k: calls.append(1) or search(*a, **k))

    levels = TextureCodec.from_bytes(tiny_bundle.texture).config.levels
    stated = load_bundle(
        save_bundle(
            tmp_path / "stated.dstdb",
            replace(tiny_bundle.config, training={"train_settings": {"lambdas": [4.0**k for k in range(levels)]}}),
            tiny_bundle.template,
            texture=tiny_bundle.texture,
        )
    )
    budget = scan.raw_bytes // 40
    plain = codec.encode(scan, stated, budget_bytes=budget, device="cpu", require_texture=True)
    searched = codec.encode(scan, stated, budget_bytes=budget, device="cpu", effort=2, require_texture=True)
    assert len(searched) <= budget
    error = lambda data: float(np.mean((codec.decode(data, stated).array - scan.array) ** 2))  # noqa: E731
    assert calls and error(searched) <= error(plain)  # effort 2 searched, measured, kept the closer file
    calls.clear()
    # a bundle that does not state its λs: no search, the effort-1 file
    assert codec.encode(
        scan, tiny_bundle, budget_bytes=budget, device="cpu", effort=2, require_texture=True
    ) == codec.encode(scan, tiny_bundle, budget_bytes=budget, device="cpu", effort=1, require_texture=True)
    assert not calls


def test_the_refinement_layer_alone_is_kept_where_it_decodes_closer(tiny_bundle, scan, monkeypatch):
    from deepstd import postfilter, refine
    from deepstd.codec import encoder
    from deepstd.progress import Reporter

    budget = scan.raw_bytes // 24
    texture = codec.encode(scan, tiny_bundle, budget_bytes=budget, device="cpu", require_texture=True)
    alone = encoder.refinement_only(scan, budget, Reporter())
    error = lambda data: float(np.mean((codec.decode(data, tiny_bundle).array - scan.array) ** 2))  # noqa: E731
    assert error(alone) != error(texture)
    chosen = codec.encode(scan, tiny_bundle, budget_bytes=budget, device="cpu")
    assert chosen == min((texture, alone), key=error)
    # encode compares the error the encoder measured for that file, which is the decoder's
    measured = encoder._closest_refinement_alone(scan, budget, Reporter())
    assert measured[0] == alone and measured[1] == pytest.approx(error(alone), rel=1e-6)
    # a refinement layer alone that decodes farther (it codes the negated scan) loses to the texture
    farther = encoder.refinement_only(scan.with_array(-scan.array), budget, Reporter())
    monkeypatch.setattr(
        encoder, "_closest_refinement_alone", lambda volume, budget, reporter, workers: (farther, error(farther))
    )
    assert codec.encode(scan, tiny_bundle, budget_bytes=budget, device="cpu") == texture
    monkeypatch.undo()
    # the file: format 1.2, the refine section and a post-filter, no bundle named or needed, the exact grid
    parsed = unpack(alone)
    assert postfilter.bands_for(budget) is not None
    assert parsed.version == (1, 2) and set(parsed.sections) == {refine.SECTION, postfilter.SECTION}
    assert not {"bundle", "codec", "intensity"} & set(parsed.header)
    assert 0.98 * budget <= len(alone) <= budget
    out = codec.decode(alone, device="cpu")
    assert (out.size, out.spacing, out.origin, out.direction, out.dtype) == (
        scan.size, scan.spacing, scan.origin, scan.direction, scan.dtype
    )  # fmt: skip
    assert out.meta["dstd"]["bundle"] is None
    box = ((3, 4, 2), (30, 25, 11))
    np.testing.assert_array_equal(codec.decode(alone, roi=box).array, out.array[2:11, 4:25, 3:30])


def test_a_budget_below_the_smallest_texture_file_gets_the_refinement_layer_alone(tiny_bundle, scan):
    from deepstd import refine

    with pytest.raises(BudgetError, match="smallest file it can be coded in is about (1[6-9]|[2-9]).. bytes"):
        codec.encode(scan, tiny_bundle, budget_bytes=150, device="cpu", require_texture=True)
    data = codec.encode(scan, tiny_bundle, budget_bytes=150, device="cpu")
    assert 147 <= len(data) <= 150 and set(unpack(data).sections) == {refine.SECTION}
    # below the refinement layer's own smallest file the error names that size instead
    with pytest.raises(BudgetError, match="smallest file it can be coded in is about") as refused:
        codec.encode(scan, tiny_bundle, budget_bytes=40, device="cpu")
    assert 60 < int(str(refused.value).split("about ")[1].split()[0]) < 150


def test_a_texture_file_whose_header_lacks_bundle_or_intensity_is_refused(coded):
    parsed = unpack(coded)
    for key in ("bundle", "intensity"):
        header = {k: v for k, v in parsed.header.items() if k != key}
        with pytest.raises(FormatError, match=f"texture section but its header has no {key}"):
            codec.decode(pack(header, parsed.sections), device="cpu")
    with pytest.raises(FormatError, match="no 'texture' section"):
        codec.decode(pack(parsed.header, {"shape": parsed.sections["shape"], "refine": b"\x02\x00"}), device="cpu")


def test_where_the_texture_never_won_on_training_scans_the_default_does_not_try_it(tiny_bundle, scan, monkeypatch):
    import dataclasses

    from deepstd.bundle import TextureStanding
    from deepstd.codec import encoder
    from deepstd.progress import Reporter

    budget = scan.raw_bytes // 24
    never = dataclasses.replace(tiny_bundle, standing=TextureStanding(0, 10))
    tried = []
    real = encoder._texture_file
    monkeypatch.setattr(encoder, "_texture_file", lambda *a, **k: tried.append(1) or real(*a, **k))
    alone = encoder.refinement_only(scan, budget, Reporter())
    assert codec.encode(scan, never, budget_bytes=budget, device="cpu") == alone and not tried
    # effort 1 tries it anyway, and so does a bundle whose texture won somewhere or has no record
    codec.encode(scan, never, budget_bytes=budget, device="cpu", effort=1)
    assert len(tried) == 1
    won = dataclasses.replace(tiny_bundle, standing=TextureStanding(1, 10))
    for bundle in (won, tiny_bundle):
        codec.encode(scan, bundle, budget_bytes=budget, device="cpu")
    assert len(tried) == 3
    kept = codec.encode(scan, never, budget_bytes=budget, device="cpu", require_texture=True)
    assert {"shape", "texture"} <= set(unpack(kept).sections)


def test_the_refinement_layer_alone_keeps_the_post_filter_whose_file_decodes_closer(scan, monkeypatch):
    from deepstd import postfilter
    from deepstd.codec import encoder
    from deepstd.progress import Reporter

    budget = scan.raw_bytes // 8
    choices = postfilter.choices_for(budget)
    assert len(choices) == 2 and choices[1] is not None
    alone = {}
    for choice in choices:
        monkeypatch.setattr(postfilter, "choices_for", lambda budget, choice=choice: [choice])
        alone[choice] = encoder.refinement_only(scan, budget, Reporter())
    monkeypatch.undo()
    assert len(set(alone.values())) == 2
    for choice, data in alone.items():
        assert unpack(data).sections[postfilter.SECTION][1:3] == bytes(choice) and len(data) <= budget
    # with both choices the second search starts from the first's step, so its file may differ from
    # the one coded alone: the encoder keeps whichever of the files it coded decodes closer
    coded = []
    real = encoder._refinement_alone_file
    monkeypatch.setattr(encoder, "_refinement_alone_file", lambda *a, **k: coded.append(real(*a, **k)) or coded[-1])
    kept = encoder.refinement_only(scan, budget, Reporter())
    error = lambda data: float(np.mean((codec.decode(data).array - scan.array) ** 2))  # noqa: E731
    files = [file[0] for file in coded]
    assert len(files) == 2 and len(set(files)) == 2 and kept == min(files, key=error)
