"""Video codecs through the ffmpeg program: slices become frames of a 12-bit grayscale clip.

HEVC (libx265) and AV1 (libaom) accept `gray12le` but not 16-bit, and silently wrap values above
4095, so intensities are stretched onto 0..4095 and the mapping is stored (16 bytes). Raw
bitstreams (`-f hevc`, `-f obu`) avoid container overhead; x265's informational SEI (`info=0`)
is dropped because a decoder does not need it. Both run single-threaded so timings compare.

x265 3.5 (Debian 12) corrupts its heap on small 12-bit frames (`free(): invalid next size`, on
a quarter to three quarters of the hippocampus crops depending on options, and on 48x40 test
frames) in its AVX2/AVX-512 kernels: with `asm=sse4.2` none of the 80 crops crashed at two CRFs,
at the same speed. Its lookahead also needs `lookahead-slices=0` on small frames; `pools=none`
runs it on one thread.
The knob is the constant-rate factor (integer for libaom, fractional for x265).
"""

from __future__ import annotations

import platform
import shutil
import subprocess
from abc import abstractmethod
from typing import List, Optional

import numpy as np

from ..packing import Packer, Unpacker
from ..volume import Volume
from .base import Peer, PeerError
from .budget import Knob
from .mapping import LevelMap

CODE_LEVELS = 1 << 12
PIXEL_FORMAT = "gray12le"


def run_ffmpeg(args: List[str], stdin: bytes, what: str, program: str = "ffmpeg") -> bytes:
    """ffmpeg's stdout for `args`; a crash or error exit becomes a PeerError naming the codec."""
    command = [program, "-hide_banner", "-loglevel", "error", *args]
    result = subprocess.run(command, input=stdin, capture_output=True)
    if result.returncode != 0:
        detail = result.stderr.decode(errors="replace").strip().splitlines()[-3:]
        signal = f" (killed by signal {-result.returncode})" if result.returncode < 0 else ""
        raise PeerError(f"{what} failed with exit status {result.returncode}{signal}: " + " | ".join(detail))
    return result.stdout


def encoder_missing(encoder: str) -> Optional[str]:
    """Why ffmpeg cannot encode with `encoder` here, or None."""
    if shutil.which("ffmpeg") is None:
        return "the ffmpeg program is not installed (Debian: apt-get install ffmpeg)"
    listed = subprocess.run(["ffmpeg", "-hide_banner", "-encoders"], capture_output=True, text=True).stdout
    if f" {encoder} " not in listed:
        return f"this ffmpeg was built without the {encoder} encoder"
    return None


class VideoPeer(Peer):
    """Shared framing: shape, intensity mapping, one raw bitstream of z frames."""

    encoder: str
    stream_format: str

    def unavailable_reason(self) -> Optional[str]:
        return encoder_missing(self.encoder)

    def _prepare(self, volume: Volume):
        mapping = LevelMap.fit(volume.array, volume.dtype, CODE_LEVELS, stretch=True)
        return volume.array.shape, mapping, mapping.codes(volume.array, CODE_LEVELS)

    def _encode_at(self, prepared, value: Optional[float]) -> bytes:
        shape, mapping, codes = prepared
        z, y, x = shape
        args = [
            "-f",
            "rawvideo",
            "-pix_fmt",
            PIXEL_FORMAT,
            "-s:v",
            f"{x}x{y}",
            "-r",
            "25",
            "-i",
            "pipe:0",
            *self._encoder_args(value),
            "-f",
            self.stream_format,
            "pipe:1",
        ]
        stream = run_ffmpeg(args, codes.astype("<u2").tobytes(), f"{self.name} encoding {x}x{y}x{z} at {value:g}")
        return mapping.pack(Packer().shape(shape)).blob(stream).bytes()

    def decode(self, data: bytes, like: Volume) -> np.ndarray:
        reader = Unpacker(data)
        shape = reader.shape(like.array.shape)
        mapping = LevelMap.unpack(reader)
        raw = run_ffmpeg(
            [
                "-threads",
                "1",
                "-f",
                self.stream_format,
                "-i",
                "pipe:0",
                "-f",
                "rawvideo",
                "-pix_fmt",
                PIXEL_FORMAT,
                "pipe:1",
            ],
            reader.blob(),
            f"{self.name} decoding",
        )
        frames = np.frombuffer(raw, dtype="<u2")
        if frames.size != np.prod(shape):
            raise PeerError(f"{self.name} decoded {frames.size} samples, expected {int(np.prod(shape))}")
        return mapping.values(frames.reshape(shape))

    @abstractmethod
    def _encoder_args(self, value: float) -> List[str]:
        """ffmpeg output options selecting the encoder at knob `value`."""


class Hevc(VideoPeer):
    name = "hevc"
    summary = "HEVC (x265 via ffmpeg), slices as gray12le frames, preset medium, CRF"
    encoder = "libx265"
    stream_format = "hevc"
    knob = Knob(smallest=51.0, largest=0.0)

    def _encoder_args(self, value: float) -> List[str]:
        params = "lookahead-slices=0:info=0:pools=none:frame-threads=1:log-level=error"
        if platform.machine().lower() in ("x86_64", "amd64"):
            params += ":asm=sse4.2"
        return ["-c:v", "libx265", "-preset", "medium", "-crf", f"{value:.3f}", "-x265-params", params]


class Av1(VideoPeer):
    name = "av1"
    summary = "AV1 (libaom via ffmpeg), slices as gray12le frames, constant quality (CRF)"
    encoder = "libaom-av1"
    stream_format = "obu"
    knob = Knob(smallest=63, largest=0, integer=True)
    #: libaom speed preset: 0 is slowest/best; 4 keeps a bisection on a 2.5 Mvoxel scan in minutes.
    cpu_used = 4

    def _encoder_args(self, value: float) -> List[str]:
        return [
            "-c:v",
            "libaom-av1",
            "-crf",
            str(int(value)),
            "-b:v",
            "0",
            "-cpu-used",
            str(self.cpu_used),
            "-row-mt",
            "0",
            "-threads",
            "1",
        ]
