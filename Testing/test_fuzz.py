"""The fuzzer that stays (issue "Hostile input", part 5): `scripts/fuzz.py` in CI.

A bounded, seeded run of the structure-aware fuzzer over the seed corpus (Testing/fuzz_corpus) and
the tiny test bundle must end with nothing but decoded volumes and DeepSTDErrors: no other
exception, no native crash, no hang, no case above the memory limit. Every reproducer saved in
Testing/fuzz_reproducers must decode or be refused with a DeepSTDError. Cases run in a child
process (a crash or a hang cannot take pytest down); a failure prints the table, the distinct
escapes and where their reproducers were written.

    DEEPSTD_FUZZ_CASES=20000 DEEPSTD_FUZZ_SEED=7 pytest Testing/test_fuzz.py -k bounded   # a longer run
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("deepstd_fuzz", ROOT / "scripts" / "fuzz.py")
fuzz = importlib.util.module_from_spec(_spec)
sys.modules["deepstd_fuzz"] = fuzz
_spec.loader.exec_module(fuzz)  # type: ignore[union-attr]

#: 2,000 cases take ~1.5 min of worker CPU (decode cases ~30 ms, bundle encodes ~1 s); with two
#: workers on two cores the run stays well under 3 minutes
CI_CASES = int(os.environ.get("DEEPSTD_FUZZ_CASES", "2000"))
#: fixed, so that a failure reproduces with `python scripts/fuzz.py --cases N --seed S`
CI_SEED = int(os.environ.get("DEEPSTD_FUZZ_SEED", "20260"))
WORKERS = int(os.environ.get("DEEPSTD_FUZZ_WORKERS", str(min(2, os.cpu_count() or 1))))
SECTIONS = {"shape", "texture", "residual", "keep/mask", "keep/residual", "refine", "filter"}


@pytest.fixture(scope="module")
def corpus(tiny_bundle):
    return fuzz.Corpus(fuzz.CORPUS, Path(tiny_bundle.path))


def test_seed_corpus_is_small_names_the_tiny_bundle_and_covers_every_section(tiny_bundle, corpus):
    from deepstd import motion, refine

    manifest = json.loads((fuzz.CORPUS / fuzz.MANIFEST).read_text())
    files = [p for p in fuzz.CORPUS.iterdir() if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 300_000
    # the bundle is rebuilt at test time: save_bundle must reproduce it byte for byte
    assert (
        manifest["bundle"]["sha256"]
        == tiny_bundle.sha256
        == hashlib.sha256(Path(tiny_bundle.path).read_bytes()).hexdigest()
    )
    assert not corpus.retargeted
    seen = set()
    for name, parsed in corpus.parsed.items():
        if "texture" in parsed.sections:  # the refinement layer alone names no bundle
            assert tiny_bundle.sha256.startswith(parsed.header["bundle"]["sha256"]), name
        seen |= set(parsed.sections)
    assert seen == SECTIONS
    lean = {name: "encoder_version" not in p.header for name, p in corpus.parsed.items()}
    assert lean["lean.dstd"] and not lean["plain.dstd"]
    assert "max_error" in corpus.parsed["max_error.dstd"].header and "keep" in corpus.parsed["keep.dstd"].header
    assert set(corpus.parsed["refine_alone.dstd"].sections) == {"refine"}
    assert corpus.parsed["refine_alone.dstd"].version == (1, 2)
    assert corpus.parsed[fuzz.LEGACY_SEED].version == (1, 1)
    filtered, old_filter = corpus.parsed["refine_filtered.dstd"], corpus.parsed[fuzz.LEGACY_FILTER_SEED]
    assert filtered.sections["filter"][0] == 2 and old_filter.sections["filter"][0] == 1
    assert old_filter.sections["refine"] == filtered.sections["refine"]
    assert filtered.sections["refine"][0] == 7 and corpus.parsed[fuzz.LEGACY_REFINE_SEED].sections["refine"][0] == 3
    for version, name in fuzz.LEGACY_WAVELET_SEEDS.items():
        assert corpus.parsed[name].sections["refine"][0] == version and name in fuzz.KEPT_SEEDS
    moved = corpus.parsed[fuzz.MOVED_SEED].sections["refine"]
    assert moved[0] == 8 and refine.payload_of(moved)[5] == motion.BLOCK
    assert corpus.parsed[fuzz.SLABS_SEED].sections["refine"][0] == refine.SLABS_VERSION
    assert (corpus.parsed[fuzz.LEGACY_SEED].header, corpus.parsed[fuzz.LEGACY_SEED].sections) == (
        corpus.parsed["plain.dstd"].header,
        corpus.parsed["plain.dstd"].sections,
    )
    assert set(corpus.parsed["refine_filtered.dstd"].sections) == {"refine", "filter"}


def test_a_version_1_post_filter_of_the_same_weights_decodes_to_the_same_scan(corpus):
    import numpy as np

    from deepstd import codec

    new, old = (
        codec.decode(corpus.seeds[name], None, device="cpu", workers=1).array
        for name in ("refine_filtered.dstd", fuzz.LEGACY_FILTER_SEED)
    )
    np.testing.assert_array_equal(new, old)


def test_packers_and_recipes_rebuild_the_corpus_exactly(corpus):
    assert fuzz.apply_recipe(corpus.bundle, []) == corpus.bundle  # the zip writer is save_bundle's
    for name, parsed in corpus.parsed.items():
        if parsed.version == (1, 1):
            expected = fuzz.pack_raw(parsed.header, parsed.sections, minor=1)
        else:
            expected = fuzz.pack_compact(parsed.header, parsed.sections)
        assert expected == corpus.seeds[name], name
        s = parsed.sections
        if "texture" not in s:  # the refinement layer alone
            continue
        assert fuzz.build_texture(fuzz.parse_texture(s["texture"])) == s["texture"]
        shape = fuzz.parse_shape(s["shape"])
        assert fuzz.parse_shape(fuzz.build_shape(shape)) == shape
        for key in ("residual", "keep/residual"):
            if key in s:
                assert fuzz.build_residual(fuzz.parse_residual(s[key])) == s[key]
        if "keep/mask" in s:
            assert fuzz.build_keep(fuzz.parse_keep(s["keep/mask"])) == s["keep/mask"]


def test_mutator_is_seeded_and_every_class_makes_cases(corpus):
    mutator = fuzz.Mutator(corpus)
    for cls in mutator.names:
        for i in range(6):
            a, b = mutator.case(3, i, only=[cls]), mutator.case(3, i, only=[cls])
            assert a == b and a["cls"] == cls
            assert a["op"] in ("decode", "bundle_decode", "bundle_encode")
    assert mutator.case(1, 5) != mutator.case(2, 5)


@pytest.mark.slow
def test_runner_classifies_crashes_hangs_and_memory(tiny_bundle, tmp_path):
    """The runner itself: a segfault, a hang, an allocation swallowed under a DeepSTDError and a
    peak above the limit are each caught, and the worker is replaced."""
    # the timeout must let a 400 MB touch finish on a loaded machine (it read as a hang at 2 s)
    runner = fuzz.Runner(fuzz.CORPUS, Path(tiny_bundle.path), tmp_path, timeout=10, memory_gb=0.25, address_space_gb=1)
    kinds = [("raise", 0), ("segv", 0), ("hang", 0), ("swallowed", 40_000), ("touch", 400), ("touch", 8)]
    cases = [{"op": "selftest", "kind": k, "mb": mb, "id": i, "cls": k} for i, (k, mb) in enumerate(kinds)]
    results = {}
    try:
        runner.run(iter(cases), lambda case, result: results.__setitem__(case["id"], result))
    finally:
        runner.close()
    outcomes = [results[i]["outcome"] for i in range(len(kinds))]
    assert outcomes == ["other_exception", "native_crash", "hang", "memory", "memory", "ok"], results
    assert results[1]["type"] == "signal SIGSEGV"
    assert results[3]["memory_under"] == "deepstd_error"


@pytest.mark.slow
def test_bounded_fuzz_run_finds_no_escape(tiny_bundle, tmp_path):
    report = fuzz.run_fuzz(
        CI_CASES, CI_SEED, tmp_path, bundle_path=Path(tiny_bundle.path), workers=WORKERS, progress=False
    )
    counts = report.counts()
    assert report.cases == CI_CASES
    assert counts.get("ok", 0) > 0.1 * CI_CASES and counts.get("deepstd_error", 0) > 0.3 * CI_CASES, report.render()
    bad = {k: counts.get(k, 0) for k in ("other_exception", "native_crash", "hang", "memory", "fuzzer_error")}
    assert not any(bad.values()), (
        f"{bad}\n{report.render()}\nreproducers: {tmp_path / 'reproducers'}\n"
        f"rerun: python scripts/fuzz.py --cases {CI_CASES} --seed {CI_SEED} --out /tmp/fuzz"
    )


REPRODUCER_FILES = sorted(p.name for p in fuzz.REPRODUCERS.glob("*") if p.name.endswith(fuzz.REPRODUCER_SUFFIXES))


@pytest.fixture(scope="module")
def replayed(tiny_bundle, tmp_path_factory):
    """Every reproducer run once, in a worker process (a crash must not take pytest down)."""
    if not REPRODUCER_FILES:
        return {}
    return fuzz.replay([fuzz.REPRODUCERS], tmp_path_factory.mktemp("replay"), bundle_path=Path(tiny_bundle.path))


@pytest.mark.parametrize("name", REPRODUCER_FILES)
def test_reproducer_decodes_or_raises_only_a_deepstd_error(replayed, name):
    result = replayed[name]
    assert result["outcome"] in ("ok", "deepstd_error"), (
        f"{name}: {result['outcome']} {result.get('type', '')} at {result.get('deepstd_site', '?')} "
        f"(raised at {result.get('site', '?')}): {result.get('message', '')}"
    )
