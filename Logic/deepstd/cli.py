"""The `deepstd` command: parses arguments, calls the package API, prints. Nothing else lives here.

Errors the user can cause print one line and exit 2 (1 for internal errors, 130 for Ctrl-C, 143
for SIGTERM); `--debug` shows the traceback instead. Argument errors are one line too, and every
output is checked to be writable (`check_writable`) before any work starts.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import List, Optional

from . import __version__
from .errors import Cancelled, DeepSTDError, InputError
from .progress import Terminated, terminate_on_sigterm

ALLOW_GAPS_HELP = "resample a DICOM series with missing slices onto a regular grid instead of refusing it"


# --- outputs ------------------------------------------------------------------------------------
def check_writable(path, kind: str = "file") -> None:
    """Refuse an output that cannot be written, before the work that would produce it starts.

    `kind`: "file" (created or replaced), "image" (an image file by its suffix, or a new or empty
    folder for a DICOM series when it has none, as `io.write` decides), "image-file" (an image
    file only) or "folder" (created if absent, written into). Missing parent folders are fine
    (they are created, as the writers do) when the nearest existing one is a folder this user may
    write in. Raises `InputError` naming the path; writes nothing.
    """
    from .io import itk

    path = Path(path)
    if kind in ("image", "image-file") and itk.suffix_of(path) is None:
        if path.suffix or kind == "image-file":
            raise InputError(
                (f"{path}: unknown output format {path.suffix!r}" if path.suffix else f"{path}: no image suffix")
                + f" (use {', '.join(itk.SUFFIXES)}"
                + (", or a folder name for a DICOM series)" if kind == "image" else ")")
            )
        kind = "dicom"
    try:
        if kind == "dicom" and path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise InputError(f"{path}: DICOM output needs a new or empty folder")
        if kind == "folder" and path.exists() and not path.is_dir():
            raise InputError(f"{path}: is a file, not a folder")
        if kind not in ("dicom", "folder") and path.is_dir():
            raise InputError(f"{path}: is a folder; give a file name")
        # the folder that gets new entries, or the nearest existing folder above it
        folder = path if kind == "folder" else path.parent
        existing = next(p for p in (folder, *folder.parents) if p.exists() or p.is_symlink())  # (a dangling link)
    except OSError as exc:  # e.g. a parent folder this user may not enter
        raise InputError(f"{path}: cannot check the output ({exc.strerror or exc})") from None
    if not existing.is_dir():
        raise InputError(f"{path}: cannot write there: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{path}: cannot write there: no permission to write in {existing}")


# --- commands -----------------------------------------------------------------------------------
def cmd_info(args) -> None:
    from . import describe

    print(describe.describe(args.path, series_uid=args.series, allow_gaps=args.allow_gaps))


def cmd_convert(args) -> None:
    from .io import read, write

    check_writable(args.output, "image")
    volume = read(args.input, series_uid=args.series, allow_gaps=args.allow_gaps)
    for warning in volume.meta.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    out = write(volume, args.output)
    print(f"wrote {out} ({'x'.join(map(str, volume.size))}, {volume.dtype})")


def cmd_bundles(args) -> None:
    from .bundle import load_bundle, shipped_bundles

    shipped = shipped_bundles()
    if not shipped:
        print("no codec bundles are shipped with this installation yet")
    for path in shipped.values():
        print(load_bundle(path).describe())


def cmd_phantom(args) -> None:
    from .io import write
    from .phantom import phantom

    check_writable(args.output, "image")
    volume = phantom(seed=args.seed)
    out = write(volume, args.output)
    print(
        f"wrote {out}: synthetic {volume.units} phantom {'x'.join(map(str, volume.size))}, "
        f"oblique direction, spacing {'x'.join(f'{s:g}' for s in volume.spacing)} mm"
    )


def cmd_register(args) -> None:
    import json

    from .shape import register_files

    for output, kind in ((args.out_warped, "image"), (args.out_field, "image-file"), (args.json, "file")):
        if output is not None:
            check_writable(output, kind)
    settings = {k: v for k, v in (("steps", args.steps), ("omega", args.omega)) if v is not None}
    with progress_bar() as progress:
        result = register_files(
            args.moving,
            args.template,
            out_warped=args.out_warped,
            out_field=args.out_field,
            json_path=args.json,
            progress=progress,
            moving_labels=args.moving_labels,
            template_labels=args.template_labels,
            device=args.device,
            **settings,
        )
    print(json.dumps(result, indent=1))


def cmd_encode(args) -> None:
    from .codec import encode_file

    check_writable(args.output, "file")
    if args.dicom_object:
        from .dicom_object import encode_object as encode_file  # the same report, the file a DICOM object
    with progress_bar() as progress:
        report = encode_file(
            args.input,
            args.output,
            args.bundle,
            ratio=args.ratio,
            budget_bytes=args.budget,
            max_error=args.max_error,
            keep=args.keep,
            series_uid=args.series,
            allow_gaps=args.allow_gaps,
            deidentify=_deidentify_salt(args) or False,
            device=args.device,
            workers=args.workers,
            progress=progress,
            effort=args.effort,
            require_texture=args.require_texture,
        )
    for warning in report["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    target = (
        f"every voxel within ±{report['max_error']:g}"
        if report["max_error"] is not None
        else f"target {report['target_ratio']:g}x, budget {report['budget_bytes']} B"
    )
    print(
        f"wrote {report['output']}: {report['bytes']} bytes of {report['raw_bytes']} raw, "
        f"{report['ratio']:.1f}x ({target}) in {report['seconds']:.1f} s"
    )
    print(f"coded with {report['layers']}")
    if report.get("keep"):
        k = report["keep"]
        print(
            f"keep mask: {k['voxels']} voxels within ±{k['max_error']:g}; mask {k['mask_bytes']} B, "
            f"their residual {k['residual_bytes']} B, "
            f"the rest {report['bytes'] - k['mask_bytes'] - k['residual_bytes']} B"
        )
    if report.get("deidentified"):
        print(f"de-identified: {report['deidentified']}")


def cmd_decode(args) -> None:
    from .codec import decode_file

    check_writable(args.output, "image")
    with progress_bar() as progress:
        volume = decode_file(
            args.input,
            args.output,
            args.bundle,
            roi=args.roi,
            roi_mm=args.roi_mm,
            device=args.device,
            workers=args.workers,
            progress=progress,
        )
    for warning in volume.meta.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    print(f"wrote {args.output} ({'x'.join(map(str, volume.size))}, {volume.dtype})")


def cmd_demo(args) -> None:
    from .demo import run_demo

    if args.png:
        check_writable(args.png, "file")
    if args.out:
        check_writable(args.out, "file")
    with progress_bar() as progress:
        r = run_demo(args.input, args.bundle, args.ratio, png=args.png, out_dstd=args.out, progress=progress)
    print(f"scan:      {r['input']} ({'x'.join(map(str, r['size']))}, {r['raw_bytes']} raw bytes)")
    print(f"bundle:    {r['bundle']}")
    print(f"file:      {r['bytes']} bytes, {r['ratio']:.1f}x (target {r['target_ratio']:g}x)")
    print(f"coded:     with {r['layers']}")
    print(f"time:      encode {r['encode_s']:.1f} s, decode {r['decode_s']:.1f} s")
    print(f"quality:   MAE {r['mae']:.3f}  PSNR {r['psnr']:.2f} dB  SSIM {r['ssim']:.4f}")
    if r["png"]:
        print(f"picture:   {r['png']} (rows: slices; columns: original | decoded | residue)")
    for warning in r["warnings"]:
        print(f"warning:   {warning}")


def cmd_train(args) -> None:
    from .training import train_bundle

    check_writable(args.out, "file")
    check_writable(args.out.with_suffix(".work"), "folder")  # its resumable intermediate results
    with progress_bar() as progress:
        train_bundle(
            args.data,
            args.out,
            args.name or args.out.stem,
            args.modality,
            args.region,
            holdout=args.holdout,
            steps=args.steps,
            patch=args.patch,
            augment_copies=args.augment,
            threads=args.threads,
            resume=args.resume,
            teacher=args.teacher,
            fine_template=args.fine_template,
            context=args.template_context,
            description=args.description or "",
            progress=progress,
            command="deepstd " + " ".join(sys.argv[1:]),
            log=_log,
        )


def cmd_bench(args) -> None:
    from . import bench
    from .bundle import load_bundle
    from .container import write_atomic

    check_writable(args.out, "folder")
    bundle = load_bundle(args.bundle)
    scans = list(args.scans)
    if args.data:
        held_out = bundle.config.holdout_files
        folder = args.data / "images" if (args.data / "images").is_dir() else args.data
        scans += [folder / name for name in held_out]
    if not scans:
        raise InputError(
            "no scans: give files, or --data with the bundle's population folder "
            "(its held-out validation scans are used)"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    started = time_now()
    with progress_bar() as progress:
        bench.run(
            scans,
            bundle,
            args.out / "results.jsonl",
            args.ratios,
            args.peers,
            args.threads,
            progress=progress,
            downstream=args.downstream,
        )
    records = bench.load(args.out / "results.jsonl")
    title = f"{bundle.name}: {len(set(r['scan'] for r in records))} scans"
    text = bench.summary(records, title)
    write_atomic(args.out / "summary.md", text.encode())
    bench.plot(records, args.out / "rd.png", title)
    print(text)
    print(f"results: {args.out}/results.jsonl, summary.md, rd.png ({time_now() - started:.0f} s this run)")


def cmd_pacs(args) -> None:
    from . import pacs

    check_writable(args.workdir, "folder")
    query = pacs.parse_query(args.query or [])
    bundles = pacs.parse_bundles(args.bundle) if args.pacs_command == "archive" else args.bundle
    common = dict(orthanc_url=args.orthanc_url, timeout=args.timeout, retry_failed=args.retry_failed,
                  threads=args.threads, log=_log)  # fmt: skip
    with progress_bar() as progress:
        if args.pacs_command == "archive":
            totals = pacs.archive(args.server, query, bundles, args.ratio, args.workdir,
                                  delete_originals=args.delete_originals, allow_gaps=args.allow_gaps,
                                  effort=args.effort, progress=progress, **common)  # fmt: skip
        else:
            totals = pacs.restore(args.server, query, args.workdir, bundle=bundles, progress=progress, **common)
    print(", ".join(f"{key} {value}" for key, value in totals.items() if not isinstance(value, (dict, list))))
    print(f"manifest: {args.workdir / 'manifest.jsonl'}")
    if totals.get("failed"):
        raise DeepSTDError(f"{totals['failed']} series failed; their reasons are in the manifest")


def _deidentify_options(command) -> None:
    command.add_argument(
        "--deidentify",
        action="store_true",
        help="remove patient identity from the .dstd header (DICOM PS3.15 basic profile, via dicognito)",
    )
    command.add_argument(
        "--deidentify-salt",
        metavar="SALT",
        help="key of the pseudonyms: the same salt gives the same replacement UIDs (give it again to "
        "resume a batch or to add series of a study later); default: a new random one",
    )


def _effort_option(parser) -> None:
    parser.add_argument(
        "--effort",
        type=int,
        choices=(0, 1, 2),
        default=0,
        help="1: try the learned texture even where the bundle's training scans say it never decodes "
        "closer than the refinement layer alone, and where the budget allows, also the texture at a middle "
        "rate plus a refinement layer; keep the closest file (slower); 2: also search the texture "
        "latents for this scan (about twice the encode time on a CPU; docs/CODEC.md)",
    )


def _deidentify_salt(args) -> Optional[str]:
    """The salt to de-identify with, or None when not asked; a salt alone implies --deidentify."""
    if not (args.deidentify or args.deidentify_salt):
        return None
    from .deidentify import new_salt

    return args.deidentify_salt or new_salt()


def cmd_batch_compress(args) -> None:
    from . import batch

    check_writable(args.out_dir, "folder")
    with _batch_interrupt(args.out_dir), progress_bar() as progress:
        totals = batch.compress(
            args.source,
            args.out_dir,
            args.bundle,
            args.ratio,
            verify=args.verify,
            workers=args.workers,
            scheduler=args.scheduler,
            retry_failed=args.retry_failed,
            allow_gaps=args.allow_gaps,
            deidentify_salt=_deidentify_salt(args),
            effort=args.effort,
            progress=progress,
            log=_log,
        )
    print(
        f"{totals['scans']} scans: {totals['compressed']} compressed, {totals['skipped']} already done, "
        f"{totals['failed']} failed (this run or before)"
        + (
            f"; this run {totals['raw_bytes'] / 1e6:.1f} MB -> {totals['bytes'] / 1e6:.3f} MB"
            if totals["bytes"]
            else ""
        )
    )
    print(f"manifest: {args.out_dir / 'manifest.jsonl'}")
    if totals["failed"]:
        raise DeepSTDError(
            f"{totals['failed']} of {totals['scans']} scans failed; their reasons are in "
            "the manifest (`deepstd batch report` lists them)"
        )


def cmd_batch_decompress(args) -> None:
    from . import batch

    check_writable(args.restore_dir, "folder")
    with _batch_interrupt(args.restore_dir), progress_bar() as progress:
        totals = batch.decompress(
            args.out_dir,
            args.restore_dir,
            as_dicom=args.dicom,
            bundle=args.bundle,
            workers=args.workers,
            scheduler=args.scheduler,
            progress=progress,
            log=_log,
        )
    print(
        f"{totals['scans']} scans: {totals['restored']} restored, {totals['skipped']} already there, "
        f"{totals['failed']} failed"
    )
    for failure in totals["failures"]:
        print(f"failed: {failure}", file=sys.stderr)
    if totals["failed"]:
        raise DeepSTDError(f"{totals['failed']} of {totals['scans']} scans could not be restored")


def cmd_batch_report(args) -> None:
    from .batch import write_report

    check_writable(args.out_dir, "folder")
    report = write_report(args.out_dir, args.bandwidth)
    print(report["text"])
    print(
        f"report: {report['markdown']}"
        + (f", {report['png']}" if report["png"] else " (no plots: matplotlib is not installed)")
    )


def _log(line: str) -> None:
    """A line on stderr above the progress bar (not glued to its end)."""
    from tqdm import tqdm

    tqdm.write(line, file=sys.stderr)


class _batch_interrupt:
    """Ctrl-C or SIGTERM during a batch: finished scans stay; say so (not "no output written") and
    exit 130 (143 for SIGTERM)."""

    def __init__(self, folder):
        self.folder = folder

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if kind is not None and issubclass(kind, (KeyboardInterrupt, Cancelled)):
            what, status = ("terminated", 143) if issubclass(kind, Terminated) else ("interrupted", 130)
            print(
                f"deepstd: {what}; finished scans are kept in {self.folder}; run the same command again to resume",
                file=sys.stderr,
            )
            sys.exit(status)
        return False


def time_now() -> float:
    import time

    return time.perf_counter()


class progress_bar:
    """A tqdm bar fed by `Progress` events: one bar, relabelled per stage, on stderr."""

    def __enter__(self):
        from tqdm import tqdm

        self._bar = tqdm(
            total=1000,
            file=sys.stderr,
            leave=False,
            dynamic_ncols=True,
            bar_format="{desc:<12} {bar} {percentage:3.0f}% {elapsed} {postfix}",
        )
        return self

    def __call__(self, event) -> None:
        import time

        now = time.monotonic()
        if now - getattr(self, "_shown", 0.0) < 0.2 and event.fraction < 1.0:
            return  # a redraw per event floods logs and costs time in tight loops
        self._shown = now
        self._bar.set_description_str(event.stage, refresh=False)
        if event.message:
            self._bar.set_postfix_str(event.message[:60], refresh=False)
        self._bar.n = int(event.fraction * 1000)
        self._bar.refresh()

    def __exit__(self, *exc) -> None:
        self._bar.close()


# --- parser -------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """Argument errors in one line (`deepstd: error: ...`, exit 2), for subcommands too (they are
    made with the parser's class); `--help` shows the usage."""

    def error(self, message: str):
        message = " ".join(str(message).split())
        self.exit(2, f"deepstd: error: {message} (see `{self.prog} --help`)\n")


def number(kind=float, at_least: float = 0.0, above: bool = False, what: str = ""):
    """An argparse `type`: a finite int or float ≥ `at_least` (> with `above`); `what` says what it is."""
    noun = "a whole number" if kind is int else "a number"
    bound = f"{'above' if above else 'at least'} {at_least:g}"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or value < at_least or (above and value == at_least):
            raise argparse.ArgumentTypeError(f"must be {noun} {bound}{what}, got {text!r}")
        return value

    parse.__name__ = noun
    return parse


def number_list(kind=float, at_least: float = 0.0, what: str = ""):
    """Comma-separated `number`s, e.g. `--ratios 32,64,128`."""
    one = number(kind, at_least, what=what)

    def parse(text: str):
        return [one(part.strip()) for part in text.split(",")]

    return parse


COUNT = number(int, 1)
RATIO = number(float, 1, what=" (raw bytes / file bytes)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="deepstd",
        description="DeepSTD: compress 3D medical scans 32x-512x relative to a "
        "population template, and inspect what was lost.",
    )
    parser.add_argument("--version", action="version", version=f"deepstd {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    info = commands.add_parser(
        "info", help="describe a volume, a DICOM folder (its series), a .dstd file or a .dstdb bundle"
    )
    info.add_argument("path", type=Path)
    info.add_argument("--series", metavar="UID", help="DICOM SeriesInstanceUID to describe")
    info.add_argument("--allow-gaps", action="store_true", help=ALLOW_GAPS_HELP)
    info.set_defaults(run=cmd_info)

    convert = commands.add_parser("convert", help="convert between NIfTI, NRRD, MHA/MHD and DICOM")
    convert.add_argument("input", type=Path, help="image file, DICOM file or DICOM folder")
    convert.add_argument("output", type=Path, help="image file, or a new folder for a DICOM series")
    convert.add_argument("--series", metavar="UID", help="DICOM SeriesInstanceUID to read")
    convert.add_argument("--allow-gaps", action="store_true", help=ALLOW_GAPS_HELP)
    convert.set_defaults(run=cmd_convert)

    register = commands.add_parser("register", help="Cycle-INR registration of a scan to a template")
    register.add_argument("moving", type=Path)
    register.add_argument("template", type=Path)
    register.add_argument("--out-warped", type=Path, help="the scan warped into the template frame")
    register.add_argument(
        "--out-field", type=Path, help="displacement field (mm, LPS, ITK resampling convention, on the template grid)"
    )
    register.add_argument("--json", type=Path, help="write the registration metrics here")
    register.add_argument("--moving-labels", type=Path, help="label map of the scan (warped, Dice reported)")
    register.add_argument("--template-labels", type=Path, help="label map of the template (for Dice)")
    register.add_argument("--steps", type=COUNT, help="optimisation steps per omega level")
    register.add_argument(
        "--omega", type=number(float, 0, above=True), help="starting SIREN omega (bundle default otherwise)"
    )
    _device_options(register)  # where the fit runs; the field and metrics are computed on the CPU
    register.set_defaults(run=cmd_register)

    encode = commands.add_parser("encode", help="compress a scan to a .dstd file at a target ratio")
    encode.add_argument("input", type=Path, help="image file, DICOM file or DICOM folder")
    encode.add_argument("output", type=Path, help="the .dstd file to write")
    encode.add_argument("--bundle", required=True, help="shipped bundle name or .dstdb path")
    size = encode.add_mutually_exclusive_group(required=True)
    size.add_argument("--ratio", type=RATIO, help="raw bytes / file bytes, e.g. 128")
    size.add_argument("--budget", type=COUNT, metavar="BYTES", help="file size limit in bytes")
    size.add_argument(
        "--max-error",
        type=number(float, 0),
        metavar="E",
        help="instead of a size: every voxel within ±E of the original (original units; 0 = lossless)",
    )
    encode.add_argument(
        "--keep",
        metavar="LABELMAP[:E]",
        help="code the voxels where this label map (same grid) is > 0 within ±E (default 0: "
        "lossless), the rest at the ratio; the mask is stored in the file",
    )
    _effort_option(encode)
    encode.add_argument(
        "--require-texture",
        action="store_true",
        help="always code with the learned texture, even where the refinement layer alone "
        "decodes closer: what the texture codec itself achieves",
    )
    encode.add_argument("--series", metavar="UID", help="DICOM SeriesInstanceUID to read")
    encode.add_argument("--allow-gaps", action="store_true", help=ALLOW_GAPS_HELP)
    encode.add_argument(
        "--dicom-object",
        action="store_true",
        help="write OUT as one DICOM instance (Raw Data Storage) holding the .dstd, in the source's "
        "patient and study, for a PACS (docs/FORMAT.md)",
    )
    _deidentify_options(encode)
    _device_options(encode)
    encode.set_defaults(run=cmd_encode)

    decode = commands.add_parser(
        "decode", help="restore a .dstd file or DeepSTD DICOM object (NIfTI, NRRD, MHA, or a folder: DICOM)"
    )
    decode.add_argument("input", type=Path)
    decode.add_argument("output", type=Path, help="image file, or a new folder for a DICOM series")
    decode.add_argument("--bundle", help="bundle name or path (default: the installed one the file names)")
    where = decode.add_mutually_exclusive_group()
    where.add_argument(
        "--roi",
        metavar="x0:x1,y0:y1,z0:z1",
        help="decode only this box of voxels of the original grid (exactly as a full decode has it)",
    )
    where.add_argument("--roi-mm", metavar="x0:x1,y0:y1,z0:z1", help="the same, as a box in LPS millimetres")
    _device_options(decode)
    decode.set_defaults(run=cmd_decode)

    demo = commands.add_parser("demo", help="compress and decompress an example (or --input) and show the loss")
    demo.add_argument("--input", type=Path, help="a scan of your own (default: an unseen scan made from the template)")
    demo.add_argument("--bundle", default="la-mr")
    demo.add_argument("--ratio", type=RATIO, default=128.0)
    demo.add_argument("--png", default="deepstd_demo.png", help="picture of original | decoded | residue")
    demo.add_argument("--out", help="also keep the .dstd file here")
    demo.set_defaults(run=cmd_demo)

    train = commands.add_parser("train", help="train a codec bundle on a folder of scans (CPU hours)")
    train.add_argument("data", type=Path, help="folder with images/*.nii.gz (labels/ optional)")
    train.add_argument("--out", type=Path, required=True, help="the .dstdb bundle to write")
    train.add_argument("--name")
    train.add_argument("--modality", required=True, help="MR or CT")
    train.add_argument("--region", required=True)
    train.add_argument("--holdout", type=number(int, 0), default=6, help="last N scans kept out for validation")
    train.add_argument("--steps", type=COUNT, default=6000)
    train.add_argument("--patch", type=COUNT, default=48)
    train.add_argument("--augment", type=number(int, 0), default=0, help="augmented copies per training scan")
    train.add_argument("--threads", type=COUNT, default=1)
    train.add_argument("--resume", action="store_true")
    train.add_argument(
        "--teacher",
        metavar="BUNDLE",
        help="start from this bundle's texture codec and distil its features (scarce data)",
    )
    train.add_argument(
        "--fine-template",
        action="store_true",
        help="code the texture on an isotropic grid at the population's finest spacing "
        "(at most 3 million voxels, so the bundle stays under 10 MB) instead of the template scan's own grid",
    )
    train.add_argument(
        "--template-context",
        type=number(int, 0),
        default=0,
        metavar="N",
        help="the texture's entropy model reads the template through a branch of N channels (e.g. 32; "
        "docs/TEXTURE.md: +0.1-0.3 dB at 64-256x on held-out hippocampus crops)",
    )
    train.add_argument("--description", help="what the bundle's users should know (subjects, limits)")
    train.set_defaults(run=cmd_train)

    bench = commands.add_parser("bench", help="DeepSTD against the peer codecs on the same scans and budgets")
    bench.add_argument("scans", type=Path, nargs="*", help="scan files")
    bench.add_argument("--bundle", required=True)
    bench.add_argument("--data", type=Path, help="the bundle's population folder: bench its held-out scans")
    bench.add_argument(
        "--ratios",
        type=number_list(float, 1, what=" (raw bytes / file bytes)"),
        default=[32, 64, 128, 256],
        help="comma-separated target ratios (default 32,64,128,256)",
    )
    bench.add_argument(
        "--peers",
        nargs="*",
        default=None,
        help="peer names (default: the lossy peers but AV1); deepstd-effort1/-effort2 add DeepSTD's slower "
        "presets, deepstd-texture the learned texture alone (--require-texture)",
    )
    bench.add_argument("--threads", type=COUNT, default=1)
    bench.add_argument("--out", type=Path, required=True, help="folder for results.jsonl, summary.md, rd.png")
    bench.add_argument(
        "--downstream",
        default=None,
        metavar="SEGMENTER",
        help="also segment original and decoded scans with this segmenter (shipped name, e.g. "
        "la-mr, or a .safetensors path) and report Dice / HD95 between the two",
    )
    bench.set_defaults(run=cmd_bench)

    batch = commands.add_parser("batch", help="compress, restore and report on whole collections (on Dask)")
    batch_commands = batch.add_subparsers(dest="batch_command", metavar="ACTION", required=True)
    compress = batch_commands.add_parser(
        "compress",
        help="every scan under a folder (or in a CSV/JSON list) to a mirrored tree of .dstd "
        "files with manifest.jsonl; resumable",
    )
    compress.add_argument("source", type=Path, help="folder of scans (files, DICOM series), or a .csv/.json list")
    compress.add_argument("out_dir", type=Path, help="output folder (not inside the sources)")
    compress.add_argument("--bundle", required=True, help="shipped bundle name or .dstdb path")
    compress.add_argument("--ratio", type=RATIO, required=True, help="raw bytes / file bytes, e.g. 128")
    compress.add_argument("--verify", action="store_true", help="decode each result and record PSNR/SSIM/MAE")
    compress.add_argument(
        "--retry-failed",
        action="store_true",
        help="retry scans that failed before for a reason of their own (default: keep the record)",
    )
    compress.add_argument("--allow-gaps", action="store_true", help=ALLOW_GAPS_HELP)
    _effort_option(compress)
    _deidentify_options(compress)
    _cluster_options(compress)
    compress.set_defaults(run=cmd_batch_compress)
    decompress = batch_commands.add_parser("decompress", help="restore a compressed tree")
    decompress.add_argument("out_dir", type=Path, help="the folder `batch compress` wrote")
    decompress.add_argument("restore_dir", type=Path)
    decompress.add_argument(
        "--dicom", action="store_true", help="write every scan as a DICOM series (DICOM sources always are)"
    )
    decompress.add_argument("--bundle", help="bundle file, when the one recorded is not installed")
    _cluster_options(decompress)
    decompress.set_defaults(run=cmd_batch_decompress)
    report = batch_commands.add_parser("report", help="report.md and report.png from the manifest")
    report.add_argument("out_dir", type=Path)
    report.add_argument(
        "--bandwidth",
        type=number(float, 0, above=True),
        default=10.0,
        metavar="MBIT",
        help="link speed for the transfer-time estimate (Mbit/s, default 10)",
    )
    report.set_defaults(run=cmd_batch_report)

    pacs = commands.add_parser("pacs", help="archive or restore series on a DICOM server (DICOMweb; docs/PACS.md)")
    pacs_commands = pacs.add_subparsers(dest="pacs_command", metavar="ACTION", required=True)
    archive = pacs_commands.add_parser(
        "archive",
        help="query series, compress each into a DeepSTD object stored back on the server, verified; resumable",
    )
    archive.add_argument(
        "--bundle",
        required=True,
        action="append",
        metavar="[MODALITY=]BUNDLE",
        help="shipped bundle name or .dstdb path, for every series or (repeatable) by modality: CT=ct-torso",
    )
    archive.add_argument("--ratio", type=RATIO, required=True, help="raw bytes / file bytes, e.g. 128")
    archive.add_argument(
        "--delete-originals",
        action="store_true",
        help="delete each original series after its object is stored and verified (Orthanc's REST API)",
    )
    archive.add_argument("--allow-gaps", action="store_true", help=ALLOW_GAPS_HELP)
    _effort_option(archive)
    restore = pacs_commands.add_parser(
        "restore", help="find DeepSTD objects, decode each and store it back as a lossy-tagged series"
    )
    restore.add_argument("--bundle", help="bundle file, when the one an object names is not installed")
    for action in (archive, restore):
        action.add_argument("server", help="the DICOMweb root, e.g. http://localhost:8042/dicom-web")
        action.add_argument(
            "--query", nargs="*", metavar="KEY=VALUE", help="QIDO-RS series filters, e.g. Modality=CT StudyDate=2020-"
        )
        action.add_argument("--workdir", type=Path, required=True, help="work folder and manifest.jsonl (resumable)")
        action.add_argument("--orthanc-url", help="Orthanc's REST root, when it differs from the DICOMweb server's")
        action.add_argument("--timeout", type=number(float, 0, above=True), default=120.0, help="seconds per request")
        action.add_argument("--retry-failed", action="store_true", help="retry series that failed before")
        action.add_argument("--threads", type=COUNT, default=1, help="torch threads for coding (default 1)")
        action.set_defaults(run=cmd_pacs)

    bundles = commands.add_parser("bundles", help="list the codec bundles shipped with the package")
    bundles.set_defaults(run=cmd_bundles)

    phantom = commands.add_parser("phantom", help="write a synthetic CT phantom (a built-in example)")
    phantom.add_argument("output", type=Path)
    phantom.add_argument("--seed", type=int, default=0)
    phantom.set_defaults(run=cmd_phantom)
    return parser


def _device_options(parser) -> None:
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument(
        "--workers",
        type=COUNT,
        help="threads for the texture's blocks and the refinement layer's candidates (default: all cores)",
    )


def _cluster_options(parser) -> None:
    parser.add_argument("--workers", type=COUNT, help="local worker processes (default: one per core, at most 8)")
    parser.add_argument(
        "--scheduler", metavar="ADDRESS", help="use this Dask cluster (e.g. tcp://host:8786) instead of a local one"
    )


def main(argv: Optional[List[str]] = None) -> int:
    import warnings

    # torch/compressai deprecation notices are for their developers, not for our users
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    with terminate_on_sigterm():  # SIGTERM: stop as on Ctrl-C, but exit 143
        try:
            args = build_parser().parse_args(argv)
        except Terminated:
            print("deepstd: terminated", file=sys.stderr)
            return 143
        return run(args)


def run(args) -> int:
    """Run the parsed command; every failure becomes one line on stderr and an exit status."""
    try:
        args.run(args)
    except Terminated:
        if args.debug:
            raise
        print("deepstd: terminated; no output written", file=sys.stderr)
        return 143
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
    except Exception as exc:
        if args.debug:
            raise
        if isinstance(exc, OSError) and exc.filename is not None:  # refused by the system: a full disk,
            # a permission changed after the checks; not a bug
            print(f"deepstd: error: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        # a bug: still one line, but say how to get the details
        print(f"deepstd: internal error: {type(exc).__name__}: {exc} (rerun with --debug)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
