"""The .dstd container: exact round trips, and every corruption ends in a FormatError."""

from __future__ import annotations

import random
import stat
import struct
import zlib

import pytest

from deepstd import DeepSTDError, FormatError
from deepstd.container import (
    FLAG_COMPACT,
    FLAG_DEFLATED_HEADER,
    FLAG_DICTIONARY,
    HEADER_DICTIONARY,
    MAJOR,
    RECORD_DTYPES,
    SIGNED_PERMUTATIONS,
    geometry_header,
    header_cost,
    pack,
    read_file,
    unpack,
    varint,
    write_atomic,
)


@pytest.fixture
def sample(oblique_volume):
    header = geometry_header(oblique_volume)
    header.update(
        {
            "bundle": {"name": "la-mr", "sha256": "ab" * 32},
            "target_ratio": 128,
            "encoder": "deepstd 0.1.0",
            "warnings": [],
        }
    )
    sections = {"shape": bytes(range(200)), "texture/0": b"\x00" * 50, "texture/1": b"xyz"}
    return header, sections


def test_round_trip_and_ratio(sample, oblique_volume):
    header, sections = sample
    data = pack(header, sections)
    parsed = unpack(data)
    assert parsed.header == header
    assert list(parsed.sections) == list(sections) and parsed.sections == sections
    assert parsed.file_bytes == len(data)
    assert parsed.raw_bytes == oblique_volume.raw_bytes
    assert parsed.achieved_ratio == pytest.approx(oblique_volume.raw_bytes / len(data))


def test_small_header_overhead(sample):
    header, _ = sample
    overhead = len(pack(header, {}))
    assert overhead < len(str(header))  # deflate and varints keep the fixed cost small


def test_the_preset_dictionary_makes_a_lean_header_small_and_reads_back(oblique_volume):
    lean = dict(
        geometry_header(oblique_volume),
        units="unitless",
        intensity={"hi": 923.0, "lo": 28.0},
        bundle={"name": "hippocampus-mr", "sha256": "2c1ba72910f66306"},
        codec={"margin": [8, 8, 8]},
    )
    data = pack(lean, {"shape": b"s", "texture": b"t"})
    assert data[6] == FLAG_COMPACT | FLAG_DEFLATED_HEADER | FLAG_DICTIONARY
    assert unpack(data).header == lean
    text = zlib.compressobj(9, zlib.DEFLATED, -15, 9)
    plain = len(text.compress(str(lean).encode()) + text.flush())
    assert header_cost(lean) < 0.75 * plain, (header_cost(lean), plain)


def test_the_dictionary_flag_alone_or_a_wrong_dictionary_is_refused(sample):
    data = bytearray(pack(*sample))
    assert data[6] & FLAG_DICTIONARY
    data[6] = FLAG_DICTIONARY
    with pytest.raises(FormatError, match="unknown header flags"):
        unpack(bytes(data))
    header = b'{"dtype":"int16"}'
    deflater = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zdict=HEADER_DICTIONARY[:-40] + b"x" * 40)
    body = deflater.compress(header) + deflater.flush()
    wrong = b"DSTD" + bytes([MAJOR, 1, 3, len(body)]) + body + struct.pack("<I", zlib.crc32(body)) + b"\x00"
    with pytest.raises(FormatError):
        unpack(wrong)


def test_unknown_major_version_is_refused(sample):
    data = bytearray(pack(*sample))
    data[4] = MAJOR + 1
    with pytest.raises(FormatError, match="unsupported .dstd format version"):
        unpack(bytes(data))


def _with_header(text: bytes) -> bytes:
    return b"DSTD" + bytes([MAJOR, 0, 0, len(text)]) + text + struct.pack("<I", zlib.crc32(text)) + b"\x00"


@pytest.mark.parametrize(
    "text, message",
    [
        (b"[1, 2]", "not a JSON object"),
        (b'{"dtype": "int16"}', "no geometry"),
        (
            b'{"dtype":"int16","geometry":{"size":[70000,1,1],"spacing":[1,1,1],"origin":[0,0,0],'
            b'"direction":[1,0,0,0,1,0,0,0,1]}}',
            "implausible volume size",
        ),
        (
            b'{"dtype":"int16","geometry":{"size":[4,4,4],"spacing":[1,-1,1],"origin":[0,0,0],'
            b'"direction":[1,0,0,0,1,0,0,0,1]}}',
            "implausible spacing",
        ),
        (
            b'{"dtype":"complex","geometry":{"size":[4,4,4],"spacing":[1,1,1],"origin":[0,0,0],'
            b'"direction":[1,0,0,0,1,0,0,0,1]}}',
            "unsupported dtype",
        ),
        (b"{not json", "not valid JSON"),
    ],
)
def test_bad_headers_are_named(text, message):
    with pytest.raises(FormatError, match=message):
        unpack(_with_header(text))


def _checksummed(body: bytes) -> bytes:
    """A compact file's bytes before its checksum, with the checksum appended."""
    return body + struct.pack("<I", zlib.crc32(body))


def test_huge_declared_lengths_are_refused_before_allocation(sample):
    header, _ = sample
    data = _checksummed(pack(header, {})[:-5] + b"\xff\xff\x03")  # 65535 sections declared, none present
    with pytest.raises(FormatError, match="sections"):
        unpack(data)
    data = pack(header, {"a": b"1"})[:-4]
    cut = data.index(b"\x01a") + 2
    evil = _checksummed(data[:cut] + b"\xff\xff\xff\xff\x0f" + data[cut + 1 :])  # 4 GiB section length
    with pytest.raises(FormatError, match="limit|truncated"):
        unpack(evil)


def test_fuzz_truncations_and_bit_flips_only_raise_format_errors(sample):
    """Thousands of damaged files: each parses identically or raises a FormatError, nothing else.

    A flip may land in the minor-version byte, which readers of the same major version accept by
    design; such files must still yield exactly the original header and sections.
    """
    header, sections = sample
    data = pack(header, sections)
    rng = random.Random(1234)
    cases = [data[:n] for n in range(len(data))]
    for _ in range(4000):
        damaged = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            damaged[rng.randrange(len(damaged))] ^= 1 << rng.randrange(8)
        cases.append(bytes(damaged))
    for _ in range(500):
        cases.append(bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64))))
        cases.append(b"DSTD\x01\x00" + bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64))))
    outcomes = {"parsed": 0, "refused": 0}
    for case in cases:
        try:
            parsed = unpack(case)
        except FormatError:
            outcomes["refused"] += 1
        else:
            assert parsed.header == header and parsed.sections == sections
            outcomes["parsed"] += 1
    assert sum(outcomes.values()) == len(cases) >= 5000
    assert outcomes["refused"] > 0.98 * len(cases)
    print(f"fuzzed {len(cases)} files: {outcomes}")


def test_damage_behind_a_valid_checksum_only_raises_format_errors(sample, oblique_volume):
    """The same, with the checksum recomputed after the damage, so that the parser behind it — the
    geometry record, the header's JSON keys, the section table — meets every mutation."""
    header, sections = sample
    lean = geometry_header(oblique_volume)
    rng = random.Random(99)
    refused = total = 0
    for data in (pack(header, sections), pack(lean, {"refine": b"r" * 20, "filter": b"f"})):
        body = data[:-4]
        cases = [_checksummed(body[:n]) for n in range(len(body))]
        for _ in range(2000):
            damaged = bytearray(body)
            for _ in range(rng.randint(1, 3)):
                damaged[rng.randrange(7, len(damaged))] = rng.getrandbits(8)
            cases.append(_checksummed(bytes(damaged)))
        total += len(cases)
        for case in cases:
            try:
                parsed = unpack(case)
            except FormatError:
                refused += 1
            else:
                assert parsed.file_bytes == len(case)
    assert refused > 1000
    print(f"fuzzed {total} files behind a valid checksum: {refused} refused")


def test_legacy_files_still_read(sample):
    """A file of format 1.1 (whole JSON header and a CRC-32 per part) reads as written."""
    import json

    header, sections = sample
    text = json.dumps(header).encode()
    legacy = bytearray(b"DSTD" + bytes([MAJOR, 1, 0]) + varint(len(text)) + text + struct.pack("<I", zlib.crc32(text)))
    legacy += bytes([len(sections)])
    for name, payload in sections.items():
        raw = name.encode()
        legacy += (
            bytes([len(raw)]) + raw + varint(len(payload)) + struct.pack("<I", zlib.crc32(payload, zlib.crc32(raw)))
        )
        legacy += payload
    parsed = unpack(bytes(legacy))
    assert (parsed.header, parsed.sections, parsed.version) == (header, sections, (MAJOR, 1))
    assert unpack(pack(header, sections)).version == (MAJOR, 2)


def _geometry(spacing, origin, direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)) -> dict:
    return {
        "dtype": "int16",
        "units": "unitless",
        "geometry": {
            "size": [37, 43, 43],
            "spacing": list(spacing),
            "origin": list(origin),
            "direction": list(direction),
        },
    }


def test_the_geometry_record_restores_every_float_bit_for_bit():
    """Spacing, origin and direction come back as the same float64 bits: -0.0, 17-digit values,
    subnormal spacings, DICOM-style decimals, an oblique direction."""
    rng = random.Random(5)
    values = [0.625, -0.0, 0.0, 1e-300, 5e-324, 0.1 + 0.2, 9999.999999999998, -172.59999084472656, 123.456]
    values += [rng.uniform(1e-3, 1e4) for _ in range(30)] + [
        struct.unpack("<d", struct.pack("<Q", rng.getrandbits(62)))[0] for _ in range(30)
    ]
    values = [v for v in values if 0 < abs(v) < 1e4 or v == 0]
    oblique = (0.0, 1.0, 0.0, -0.8, 0.0, 0.6, 0.6, 0.0, 0.8)
    for i in range(0, len(values) - 2, 3):
        spacing = [abs(v) or 1.0 for v in values[i : i + 3]]
        origin = values[i : i + 3]
        for direction in (oblique, (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)):
            header = _geometry(spacing, origin, direction)
            geometry = unpack(pack(header, {})).header["geometry"]
            for key in ("spacing", "origin", "direction"):
                assert struct.pack("<3d" if key != "direction" else "<9d", *geometry[key]) == struct.pack(
                    "<3d" if key != "direction" else "<9d", *header["geometry"][key]
                ), (key, header["geometry"][key], geometry[key])


def test_the_record_names_every_dtype_a_volume_may_have():
    from deepstd.volume import SUPPORTED_DTYPES

    assert set(SUPPORTED_DTYPES) <= set(RECORD_DTYPES)
    assert RECORD_DTYPES[:8] == ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")


def test_a_common_geometry_costs_a_few_bytes():
    """Every signed-permutation direction is one byte, and so is each spacing or origin of ±1.0: the
    whole header of such a file of the refinement layer alone is 12 bytes (format 1.1: 41)."""
    for matrix in SIGNED_PERMUTATIONS:
        header = _geometry((1.0, 1.0, 1.0), (-1.0, -1.0, 1.0), matrix)
        assert header_cost(header) == 1 + 1 + 3 + 6 + 1
        assert unpack(pack(header, {})).header == header
    assert (
        header_cost(_geometry((0.625, 0.625, 1.25), (-172.5999, 12.0, 30.5)))
        == 1 + 1 + 3 + (3 + 3 + 2) + (4 + 2 + 3) + 1
    )


@pytest.mark.parametrize("units", ["unitless", "HU", "mm", None])
def test_units_by_code_or_in_the_keys_or_absent_read_back_as_written(units):
    header = _geometry((0.7, 0.9, 3.5), (-12.5, 40.25, 7.0))
    if units is None:
        del header["units"]
    else:
        header["units"] = units
    assert unpack(pack(header, {"refine": b"r"})).header == header


def _compact(record: bytes, keys: bytes = b"", flags: int = 0, minor: int = 2, sections: bytes = b"\x00") -> bytes:
    return _checksummed(
        b"DSTD" + bytes([MAJOR, minor, FLAG_COMPACT | flags, len(record + keys)]) + record + keys + sections
    )


_RECORD = bytes([3, 37, 43, 43, 0x40, 0x40, 0x40, 0x60, 0x60, 0x40, 0])  # int16, unitless, unit spacing, identity


@pytest.mark.parametrize(
    "data, message",
    [
        (_compact(_RECORD), None),
        (_compact(bytes([0x0B]) + _RECORD[1:]), "dtype/units code"),
        (_compact(bytes([0x53]) + _RECORD[1:]), "dtype/units code"),
        (_compact(_RECORD[:-1] + bytes([48])), "direction code"),
        (_compact(_RECORD[:4] + b"\xff" * 9 + b"\x7f" + _RECORD[5:]), "above the limit"),
        (_compact(_RECORD[:4] + b"\x5f\xa0\x06" + _RECORD[5:]), "exponent is 800"),
        (_compact(_RECORD[:4] + b"\x5f\x81\x05" + _RECORD[5:]), "overflows"),
        (_compact(_RECORD[:4] + b"\x60" + _RECORD[5:]), "implausible spacing"),
        (_compact(_RECORD[:-1]), "truncated"),
        (_compact(_RECORD, b'{"dtype":"uint8"}'), "repeat the geometry record"),
        (_compact(_RECORD, b"[1]"), "not a JSON object"),
        (_compact(_RECORD, flags=FLAG_DEFLATED_HEADER), "deflate|inflated"),
        (_compact(_RECORD, minor=1), "compact layout"),
        (_compact(_RECORD, sections=b"\x01\x8f\x00"), "unknown name code"),
        (_compact(_RECORD)[:-1] + b"\x00", "CRC32 mismatch"),
    ],
)
def test_a_hostile_compact_header_is_named(data, message):
    if message is None:
        assert unpack(data).header["geometry"]["spacing"] == [1.0, 1.0, 1.0]
        return
    with pytest.raises(FormatError, match=message):
        unpack(data)


def test_write_atomic_gives_the_permissions_of_a_plain_open(tmp_path, sample):
    written = write_atomic(tmp_path / "shared.dstd", pack(*sample))
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"")
    assert stat.S_IMODE(written.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)


def test_write_atomic_leaves_no_partial_file(tmp_path, sample):
    target = tmp_path / "scan.dstd"
    write_atomic(target, pack(*sample))
    assert read_file(target).sections == sample[1]

    with pytest.raises(TypeError):
        write_atomic(tmp_path / "other.dstd", object())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.dstd"]


def test_read_file_names_the_path(tmp_path):
    path = tmp_path / "bad.dstd"
    path.write_bytes(b"DSTD")
    with pytest.raises(DeepSTDError, match="bad.dstd"):
        read_file(path)


def test_varint_size_is_the_length_field_pack_writes(sample):
    from deepstd.container import varint_size

    header = sample[0]
    empty = len(pack(header, {"s": b""}))
    for n in (0, 1, 127, 128, 16383, 16384, 70000):
        assert len(pack(header, {"s": bytes(n)})) - n - empty + 1 == varint_size(n), n
    assert (varint_size(2**35 - 1), varint_size(2**35)) == (5, 6)
