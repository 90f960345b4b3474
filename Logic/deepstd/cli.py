"""The `deepstd` command: parses arguments, calls the package API, prints. Nothing else lives here.

Errors the user can cause print one line and exit 2 (1 for internal errors, 130 for Ctrl-C);
`--debug` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from . import __version__
from .errors import Cancelled, DeepSTDError


# --- commands -----------------------------------------------------------------------------------
def cmd_info(args) -> None:
    from . import describe

    print(describe.describe(args.path, series_uid=args.series))


def cmd_convert(args) -> None:
    from .io import read, write

    volume = read(args.input, series_uid=args.series)
    for warning in volume.meta.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    out = write(volume, args.output)
    print(f"wrote {out} ({'x'.join(map(str, volume.size))}, {volume.dtype})")


def cmd_phantom(args) -> None:
    from .io import write
    from .phantom import phantom

    volume = phantom(seed=args.seed)
    out = write(volume, args.output)
    print(f"wrote {out}: synthetic {volume.units} phantom {'x'.join(map(str, volume.size))}, "
          f"oblique direction, spacing {'x'.join(f'{s:g}' for s in volume.spacing)} mm")


# --- parser -------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepstd", description="DeepSTD: compress 3D medical scans 32x-512x relative to a "
                                    "population template, and inspect what was lost.")
    parser.add_argument("--version", action="version", version=f"deepstd {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    info = commands.add_parser("info", help="describe a volume, a DICOM folder (its series) or a .dstd file")
    info.add_argument("path", type=Path)
    info.add_argument("--series", metavar="UID", help="DICOM SeriesInstanceUID to describe")
    info.set_defaults(run=cmd_info)

    convert = commands.add_parser("convert", help="convert between NIfTI, NRRD, MHA/MHD and DICOM")
    convert.add_argument("input", type=Path, help="image file, DICOM file or DICOM folder")
    convert.add_argument("output", type=Path, help="image file, or a new folder for a DICOM series")
    convert.add_argument("--series", metavar="UID", help="DICOM SeriesInstanceUID to read")
    convert.set_defaults(run=cmd_convert)

    phantom = commands.add_parser("phantom", help="write a synthetic CT phantom (a built-in example)")
    phantom.add_argument("output", type=Path)
    phantom.add_argument("--seed", type=int, default=0)
    phantom.set_defaults(run=cmd_phantom)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except Cancelled:
        if args.debug:
            raise
        print("deepstd: cancelled; no output written", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("deepstd: interrupted; no output written", file=sys.stderr)
        return 130
    except DeepSTDError as exc:
        if args.debug:
            raise
        print(f"deepstd: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug: still one line, but say how to get the details
        if args.debug:
            raise
        print(f"deepstd: internal error: {type(exc).__name__}: {exc} (rerun with --debug)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
