"""What the DeepSTDSlicer module does, without any GUI: usable from scripts, the Python console,
the reader/writer plugins and headless tests (slicer-core).

`DeepSTDSlicerLogic` in DeepSTDSlicer.py (which must subclass Slicer's Qt-based
ScriptedLoadableModuleLogic) delegates here. Long operations (registration, compression,
decompression, region preview, quality metrics) run in a child Python process (`jobs`,
`deepstd.worker`) and return a started `Job`; callers poll it on the main thread (the widget with
a Qt timer), which is where every MRML change happens. The blocking variants (`compress`,
`decompress`, ...) start the same jobs and wait for them.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional

import numpy as np
import slicer

from . import codec, mrml
from .jobs import Job, start_worker

if TYPE_CHECKING:
    from deepstd.codec.header import DstdHeader
    from deepstd.grid import Frame

MODULE_NAME = "DeepSTDSlicer"
DEFAULT_RATIO = 64.0
RATIO_RANGE = (8.0, 512.0)

#: Node attributes recording where a decompressed volume came from.
ATTR_RATIO = "DeepSTD.ratio"
ATTR_BUNDLE = "DeepSTD.bundle"
ATTR_BUNDLE_ID = "DeepSTD.bundleId"
ATTR_ENCODER = "DeepSTD.encoderVersion"
ATTR_SOURCE = "DeepSTD.sourceFile"
#: The encoder's warnings (the header's "warnings", one per line) and the lossy-compression note
#: ("lossy compressed (DeepSTD, 64:1)"), which is also the node's description.
ATTR_WARNINGS = "DeepSTD.warnings"
ATTR_LOSSY = "DeepSTD.lossy"


def lossy_note(ratio: float, lossless: bool = False) -> str:
    """The note a decoded node carries: "lossy compressed (DeepSTD, 64:1)"."""
    shown = f"{ratio:.0f}" if ratio >= 10 else f"{ratio:.1f}"
    return f"{'lossless' if lossless else 'lossy'} compressed (DeepSTD, {shown}:1)"


@dataclass
class RegistrationStatus:
    """What the Registration section shows while Cycle-INR runs."""

    fraction: float = 0.0
    message: str = ""
    loss: Optional[float] = None
    folding: Optional[float] = None
    step: Optional[int] = None
    elapsed: float = 0.0


@dataclass
class RegistrationResult:
    """What a finished registration reports (the networks stay in the worker): the final
    registration loss and omega, the steps taken, the seconds it took, and the final coarse
    field (a `deepstd.shape.FieldSnapshot`-like object) that the transform node shows."""

    loss: float
    omega: float
    steps: int
    seconds: float
    snapshot: Any = None
    device: str = "cpu"


@dataclass
class CompressResult:
    path: str
    raw_bytes: int
    file_bytes: int
    seconds: float
    warnings: List[str] = field(default_factory=list)
    bundle: str = ""

    @property
    def ratio(self) -> float:
        return self.raw_bytes / max(1, self.file_bytes)

    def summary(self) -> str:
        return (
            f"{os.path.basename(self.path)}: {self.file_bytes:,} bytes from {self.raw_bytes:,} "
            f"(ratio {self.ratio:.1f}:1) in {self.seconds:.1f} s"
            + (f" with {os.path.basename(self.bundle)}" if self.bundle else "")
        )


@dataclass
class DecodedFile:
    """A decoded `.dstd` file: the volume, the file's typed header, its achieved compression
    ratio and the bundle file it was decoded with (None for a file that holds the refinement layer
    alone, which needs none)."""

    volume: Any
    header: "DstdHeader"
    achieved_ratio: float
    bundle_file: Optional[Path]


class DeepSTDCore:
    """MRML in, MRML out; all computing is done by `deepstd` (through `codec`)."""

    def __init__(self, scene=None):
        self._scene = scene
        self.last_registration = None

    @property
    def scene(self):
        return self._scene or slicer.mrmlScene

    # --- settings shared with the GUI and the file writer ---------------------------------------
    def settings(self) -> Dict[str, Any]:
        """Bundle, ratio and device from the module's parameter node (defaults if there is none).
        The bundle is "" unless one was chosen: `bundle_for_node` picks one by the scan's modality."""
        node = self.parameter_node(create=False)
        get = (lambda key: node.GetParameter(key)) if node is not None else (lambda key: "")
        try:
            ratio = float(get("ratio") or DEFAULT_RATIO)
        except ValueError:
            ratio = DEFAULT_RATIO
        return {
            "bundle": get("bundle") or "",
            "ratio": min(max(ratio, RATIO_RANGE[0]), RATIO_RANGE[1]),
            "device": get("device") if get("device") in codec.DEVICES else "auto",
        }

    def parameter_node(self, create: bool = True):
        """The module's singleton vtkMRMLScriptedModuleNode (what the GUI's parameter wrapper binds)."""
        node = self.scene.GetSingletonNode(MODULE_NAME, "vtkMRMLScriptedModuleNode")
        if node is None and create:
            node = slicer.vtkMRMLScriptedModuleNode()
            node.SetSingletonTag(MODULE_NAME)
            node.SetName(self.scene.GenerateUniqueName(MODULE_NAME))
            node.SetAttribute("ModuleName", MODULE_NAME)
            node = self.scene.AddNode(node)
        return node

    # --- Codec section --------------------------------------------------------------------------
    @staticmethod
    def bundle_names() -> List[str]:
        return list(codec.bundles().shipped_bundles())

    @staticmethod
    def describe_bundle(name_or_path: str) -> str:
        return codec.describe_bundle(name_or_path)

    @staticmethod
    def bundle_for_node(node, selected: str = ""):
        """(bundle file, why) for coding `node`: the `selected` bundle when it serves the scan's
        modality (or the modality is unknown), else the shipped bundle picked by modality and
        field of view (`codec.pick_bundle`). The modality comes from Slicer (DICOM attributes,
        subject hierarchy, DICOM database, voxel units). Raises `CodecUnavailable` saying what to
        do when neither applies, never falling back to an arbitrary bundle."""
        modality = mrml.node_modality(node)
        if selected:
            chosen = _bundle_modality(selected)
            if modality is None or chosen is None or chosen == modality:
                return selected, "chosen in the DeepSTD module"
        spacing, dims = node.GetSpacing(), node.GetImageData().GetDimensions() if node.GetImageData() else (0, 0, 0)
        info, why = codec.pick_bundle(modality, tuple(n * s for n, s in zip(dims, spacing)))
        if info is None:
            if selected and modality is not None:
                why = (
                    f"the selected codec is for {_bundle_modality(selected)} scans but "
                    f"{node.GetName()!r} is {modality}, and {why.split(': ')[0]}"
                )
            raise codec.CodecUnavailable(f"{why} (DeepSTD module, Codec section)")
        return info.path, f"{info.name}: {why}"

    def show_template(self, name_or_path: str):
        """Load a bundle's template (and its labels as a segmentation) and show it in the views."""
        bundle = codec.bundles().load_bundle(name_or_path)
        stem = bundle.path.stem
        node = mrml.add_volume_node(bundle.template, f"{stem} template", self.scene, attributes={ATTR_BUNDLE: stem})
        segmentation = None
        if bundle.template_labels is not None:
            segmentation = self.labels_to_segmentation(bundle.template_labels, f"{stem} template labels", node)
        mrml.show_layers(self.scene, background=node)
        return node, segmentation

    def labels_to_segmentation(self, labels, name: str, reference_node):
        """A segmentation node with one segment per label value of a label Volume."""
        labelmap = mrml.add_volume_node(labels, f"{name} labelmap", self.scene, class_name="vtkMRMLLabelMapVolumeNode")
        segmentation = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", self.scene.GenerateUniqueName(name))
        segmentation.CreateDefaultDisplayNodes()
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(reference_node)
        slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation)
        display = labelmap.GetDisplayNode()
        if (
            display is not None
            and display.GetColorNode() is not None
            and display.GetColorNode().GetName().endswith("_ColorTable")
        ):
            self.scene.RemoveNode(display.GetColorNode())
        self.scene.RemoveNode(labelmap)
        return segmentation

    # --- Registration section -------------------------------------------------------------------
    def start_registration(
        self,
        input_node,
        template_node,
        transform_node=None,
        on_status: Optional[Callable[[RegistrationStatus], None]] = None,
        on_done: Optional[Callable[[Any], None]] = None,
        on_error: Optional[Callable[[BaseException], None]] = None,
        grid_mode: str = "grid",
        options: Optional[Dict[str, Any]] = None,
        device: str = "auto",
    ) -> Job:
        """Register `input_node` to `template_node` in the worker process with a live preview.

        The preview is a grid transform node updated from the snapshots the registration reports
        every few steps, drawn over the views, with a zero-copy view of the input placed under it
        (so the input overlays the template as it aligns). The input node itself is not touched.
        `options` go to `deepstd.shape.register` (`settings`: a CycleSettings or a dict of its
        fields, `threads`, `prealignment`, `downsample`, `foreground`). Done gets the transform
        node; `last_registration` then holds a `RegistrationResult`. At the end the transform node
        holds the full-resolution field on the template grid, equal to what
        `deepstd register --out-field` writes (the coarse previews only show progress).
        `device` ("auto", "cpu", "cuda") goes to the worker.
        """
        moving = mrml.volume_from_node(input_node)
        template = mrml.volume_from_node(template_node)
        if transform_node is None:
            transform_node = self.scene.AddNewNodeByClass(
                "vtkMRMLGridTransformNode", self.scene.GenerateUniqueName(f"{input_node.GetName()} to template")
            )
        preview = self.preview_volume(input_node, transform_node)
        mrml.show_layers(self.scene, background=template_node, foreground=preview, foreground_opacity=0.5)
        start = time.perf_counter()
        status = RegistrationStatus()

        def show(snap) -> None:
            self.apply_snapshot(transform_node, snap, template_node, grid_mode)
            status.loss, status.step = getattr(snap, "loss", None), getattr(snap, "step", None)
            status.folding = mrml.folding_fraction(snap.displacement, snap.spacing, snap.direction)

        def progress(event) -> None:
            status.fraction, status.message = event.fraction, event.message
            status.elapsed = time.perf_counter() - start
            if event.snapshot is not None:
                show(event.snapshot)
            if on_status:
                on_status(status)

        def finish(result, folder) -> Any:
            from deepstd.worker import read_snapshot

            snap = read_snapshot(result["snapshot"]) if result.get("snapshot") else None
            self.last_registration = RegistrationResult(
                result["loss"], result["omega"], result["steps"], result["seconds"], snap, result.get("device", "cpu")
            )
            if snap is not None:
                show(snap)
            if result.get("field"):
                self.apply_field(transform_node, folder / result["field"]["file"], template_node, grid_mode)
            status.fraction, status.elapsed = 1.0, time.perf_counter() - start
            if on_status:
                on_status(status)
            return transform_node

        def prepare(folder) -> None:
            folder.add_volume("moving", moving)
            folder.add_volume("template", template)

        return start_worker(
            "register",
            prepare,
            options={"field": True, "device": device, **(options or {})},
            on_progress=progress,
            on_done=on_done,
            on_error=on_error,
            finish=finish,
            name="DeepSTD registration",
        )

    def apply_snapshot(self, transform_node, snapshot, region_node=None, grid_mode: str = "grid") -> None:
        """Show one registration snapshot (a coarse LPS field on the template grid) as the preview."""
        first = transform_node.GetDisplayNode() is None
        mrml.update_grid_transform(
            transform_node, snapshot.displacement, snapshot.spacing, snapshot.origin, snapshot.direction
        )
        if first:
            mrml.show_grid(transform_node, region_node, grid_mode)

    def apply_field(self, transform_node, path, region_node=None, grid_mode: str = "grid") -> None:
        """Put a displacement field file (vector image, mm, LPS, ITK convention: what
        `deepstd register --out-field` writes) into the transform node at full resolution."""
        import SimpleITK as sitk

        first = transform_node.GetDisplayNode() is None
        image = sitk.ReadImage(str(path))
        mrml.update_grid_transform(
            transform_node,
            sitk.GetArrayViewFromImage(image),
            image.GetSpacing(),
            image.GetOrigin(),
            image.GetDirection(),
        )
        transform_node.SetAttribute("DeepSTD.field", "full resolution (deepstd register --out-field)")
        if first:
            mrml.show_grid(transform_node, region_node, grid_mode)

    def preview_volume(self, input_node, transform_node):
        """A volume node sharing `input_node`'s voxels (no copy), placed under the preview transform."""
        name = f"{input_node.GetName()} (registration preview)"
        preview = self.scene.GetFirstNodeByName(name)
        if preview is None:
            preview = self.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        preview.SetAndObserveImageData(input_node.GetImageData())
        preview.CopyOrientation(input_node)
        preview.SetAttribute("DeepSTD.previewOf", input_node.GetID())
        if preview.GetDisplayNode() is None:
            preview.CreateDefaultDisplayNodes()
        preview.SetAndObserveTransformNodeID(transform_node.GetID())
        return preview

    # --- Compress / Decompress section ----------------------------------------------------------
    def start_compress(
        self,
        input_node,
        bundle: str,
        ratio: float,
        device: str,
        path: str,
        on_progress=None,
        on_done=None,
        on_error=None,
        max_error: Optional[float] = None,
        keep_node=None,
        keep_error: float = 0.0,
        effort: int = 0,
    ) -> Job:
        """Encode a volume node to a `.dstd` file in the worker process; done gets a
        CompressResult. `max_error`: instead of the ratio, every voxel within that bound.
        `keep_node`: a label map on the volume's grid whose voxels are kept within ±keep_error.
        `effort`: the encoder preset (0 default; 1, 2 slower and closer at the same size).
        The worker writes `path` atomically: a cancelled or failed job leaves no file."""
        mrml.require_scalar_volume(input_node)
        volume = mrml.volume_from_node(input_node)
        bundles = codec.bundles()
        bundle_file = bundles.shipped_path(bundle, bundles.shipped_bundles(), "codec bundle")
        keep = None
        if keep_node is not None:
            labels = mrml.volume_from_node(keep_node)
            if not labels.same_grid(volume):
                from deepstd.errors import InputError

                raise InputError(
                    f"the label map {keep_node.GetName()!r} is not on the grid of "
                    f"{input_node.GetName()!r}; resample it first"
                )
            keep = labels  # a label map on the scan's grid; the codec keeps its voxels > 0
        path = os.path.abspath(path)
        start = time.perf_counter()

        def prepare(folder) -> None:
            folder.add_volume("volume", volume)
            if keep is not None:
                folder.add_volume("keep", keep)

        def finish(result, folder) -> CompressResult:
            return CompressResult(
                result["path"],
                result["raw_bytes"],
                result["file_bytes"],
                time.perf_counter() - start,
                list(result.get("warnings") or []),
                str(bundle_file),
            )

        options = {"bundle": str(bundle_file), "ratio": ratio, "device": device, "max_error": max_error}
        options.update(keep_error=keep_error, effort=effort)
        return start_worker(
            "encode",
            prepare,
            options=options,
            outputs={"dstd": path},
            on_progress=on_progress,
            on_done=on_done,
            on_error=on_error,
            finish=finish,
            name="DeepSTD compress",
        )

    def start_decompress(
        self, path: str, device: str = "auto", name: Optional[str] = None, on_progress=None, on_done=None, on_error=None
    ) -> Job:
        """Decode a `.dstd` file in the worker process; done gets the new volume node."""
        return self._start_decode(
            path,
            device,
            None,
            lambda decoded: self.add_decoded_node(decoded, path, name),
            on_progress,
            on_done,
            on_error,
            "DeepSTD decompress",
        )

    def _start_decode(self, path, device, roi, make_node, on_progress, on_done, on_error, name) -> Job:
        """Read the header here (a bad file or a missing bundle fails at once), decode in the
        worker, and turn the decoded volume into a node with `make_node(DecodedFile)`."""
        path = os.path.abspath(path)
        with open(path, "rb") as stream:
            header, achieved_ratio = codec.read_header(stream.read())
        bundle_file = self.bundle_file_for(header, self._bundle_search_paths())
        box = roi(header) if callable(roi) else roi

        def finish(result, folder):
            from deepstd.worker import read_volume

            volume = read_volume(result["volume"], folder)
            volume.meta["dstd"] = result.get("dstd", {})
            return make_node(DecodedFile(volume, header, achieved_ratio, bundle_file))

        return start_worker(
            "decode",
            lambda folder: folder.add_path("dstd", path),
            options={"bundle": bundle_file and str(bundle_file), "device": device, "roi": box},
            on_progress=on_progress,
            on_done=on_done,
            on_error=on_error,
            finish=finish,
            name=name,
        )

    def decode_file(
        self, path: str, device: str = "auto", progress=None, cancel=None, search: Optional[List[Path]] = None, roi=None
    ) -> DecodedFile:
        """Read and decode a `.dstd` file in this process, or only the box `roi` of it (no MRML).
        `roi` may also be a function of the typed header (`DstdHeader`) that returns the box.
        (The .dstd reader plugin uses this: Slicer waits for it anyway. The module's jobs decode
        in the worker process.)"""
        with open(path, "rb") as stream:
            data = stream.read()
        return self.decode_data(data, device, progress, cancel, search, roi)

    def decode_data(
        self,
        data: bytes,
        device: str = "auto",
        progress=None,
        cancel=None,
        search: Optional[List[Path]] = None,
        roi=None,
    ) -> DecodedFile:
        """`decode_file` for the bytes of a `.dstd` file (the DICOM plugin's unwrapped payload)."""
        header, achieved_ratio = codec.read_header(data)
        bundle_file = self.bundle_file_for(header, self._bundle_search_paths() if search is None else search)
        box = roi(header) if callable(roi) else roi
        volume = codec.decode(data, bundle_file, device, progress, cancel, roi=box)
        return DecodedFile(volume, header, achieved_ratio, bundle_file)

    @staticmethod
    def bundle_file_for(header: "DstdHeader", search: List[Path]) -> Optional[Path]:
        """The bundle file a `.dstd` file was coded with (by id; see `deepstd.bundle.find_bundle_file`),
        None for a file that names none (the refinement layer alone), or a BundleError that says
        where to get it in Slicer."""
        from deepstd.errors import BundleError

        if header.bundle is None:
            return None
        try:
            return codec.bundles().find_bundle_file(header.bundle.name, header.bundle.sha256, search)
        except BundleError:
            raise BundleError(
                f"this file needs the codec bundle {header.bundle.label()}, which is not available: "
                "load that bundle file in the DeepSTD module's Codec section, or install the "
                "extension version that ships it"
            ) from None

    def start_slice_preview(
        self,
        path: str,
        ras,
        normal,
        half_width: int = 4,
        device: str = "auto",
        on_progress=None,
        on_done=None,
        on_error=None,
    ) -> Job:
        """Decode only a slab of `path` around the plane through `ras` with `normal` (the slice a
        view shows), in the worker process: a quick look into a large file. The node sits exactly
        where those voxels sit in the full volume, and its voxels equal the full decode's."""

        def make_node(decoded: DecodedFile):
            lo, hi = decoded.volume.meta["dstd"]["roi"]
            cut = [a for a in range(3) if hi[a] - lo[a] < decoded.header.grid.size[a]]
            axis = cut[0] if cut else 2
            stem = os.path.basename(path)
            stem = stem[:-5] if stem.endswith(".dstd") else stem
            name = f"{stem} (preview, {'ijk'[axis]} {lo[axis]}-{hi[axis] - 1})"
            node = self.add_decoded_node(decoded, path, name)
            node.SetAttribute("DeepSTD.region", f"{tuple(lo)}:{tuple(hi)}")
            return node

        return self._start_decode(
            path,
            device,
            lambda header: slab_around(header.grid, ras, normal, half_width),
            make_node,
            on_progress,
            on_done,
            on_error,
            "DeepSTD slice preview",
        )

    def add_decoded_node(self, decoded: DecodedFile, path: str, name: Optional[str] = None):
        """A volume node for a decoded file, with attributes naming ratio, bundle and encoder (empty
        for a lean header, which does not record it), the encoder's warnings, and the lossy note
        (also the node's description, which Slicer shows with the node)."""
        header = decoded.header
        note = lossy_note(decoded.achieved_ratio, lossless=header.max_error == 0)
        attributes = {
            ATTR_SOURCE: path,
            ATTR_BUNDLE: (header.bundle and header.bundle.name) or "",  # none: the refinement layer alone
            ATTR_BUNDLE_ID: header.bundle.sha256 if header.bundle else "",
            ATTR_RATIO: decoded.achieved_ratio,
            ATTR_ENCODER: header.encoder_version or "",
            ATTR_WARNINGS: "\n".join(str(w) for w in header.warnings),
            ATTR_LOSSY: note,
        }
        stem = os.path.basename(path)
        stem = stem[:-5] if stem.endswith(".dstd") else stem
        node = mrml.add_volume_node(decoded.volume, name or stem, self.scene, attributes=attributes)
        node.SetDescription(note)
        return node

    def _bundle_search_paths(self) -> List[Path]:
        selected = self.settings()["bundle"]
        return [Path(selected)] if selected and Path(selected).is_file() else []

    # --- the same operations, blocking (scripts, the Python console) --------------------------
    def register(self, input_node, template_node, transform_node=None, options=None, device: str = "auto"):
        """Register and return the grid transform node holding the full-resolution field."""
        box = {}
        job = self.start_registration(
            input_node,
            template_node,
            transform_node,
            on_done=lambda node: box.setdefault("result", node),
            on_error=lambda error: box.setdefault("error", error),
            options=options,
            device=device,
        )
        return _finish(job, box)

    def compress(
        self,
        input_node,
        path: str,
        bundle: Optional[str] = None,
        ratio: Optional[float] = None,
        device: Optional[str] = None,
        max_error: Optional[float] = None,
        keep_node=None,
        keep_error: float = 0.0,
        effort: int = 0,
    ) -> CompressResult:
        """Write `path` (.dstd); bundle/ratio/device default to the module's current settings."""
        settings, box = self.settings(), {}
        job = self.start_compress(
            input_node,
            bundle or self.bundle_for_node(input_node, settings["bundle"])[0],
            ratio or settings["ratio"],
            device or settings["device"],
            path,
            on_done=lambda result: box.setdefault("result", result),
            on_error=lambda error: box.setdefault("error", error),
            max_error=max_error,
            keep_node=keep_node,
            keep_error=keep_error,
            effort=effort,
        )
        return _finish(job, box)

    def slice_preview(self, path: str, ras, normal, half_width: int = 4, device: Optional[str] = None):
        """Blocking `start_slice_preview`: the preview node."""
        box = {}
        job = self.start_slice_preview(
            path,
            ras,
            normal,
            half_width,
            device or self.settings()["device"],
            on_done=lambda node: box.setdefault("result", node),
            on_error=lambda error: box.setdefault("error", error),
        )
        return _finish(job, box)

    def decompress(self, path: str, device: Optional[str] = None, name: Optional[str] = None):
        """Open a .dstd file as a new volume node."""
        box = {}
        job = self.start_decompress(
            path,
            device or self.settings()["device"],
            name,
            on_done=lambda node: box.setdefault("result", node),
            on_error=lambda error: box.setdefault("error", error),
        )
        return _finish(job, box)

    # --- Quality section ------------------------------------------------------------------------
    def start_residue(
        self,
        original_node,
        decoded_node,
        residue_node=None,
        table_node=None,
        on_progress=None,
        on_done=None,
        on_error=None,
    ) -> Job:
        """Residue (original − decoded) and MAE / PSNR / SSIM, computed in the worker process; done
        gets (residue node, table node, values): the residue as a diverging overlay, the values
        in a table."""
        original = mrml.volume_from_node(original_node)
        decoded = mrml.volume_from_node(decoded_node)
        if not original.same_grid(decoded):
            from deepstd.errors import InputError

            raise InputError(
                f"{decoded_node.GetName()!r} is not on the grid of {original_node.GetName()!r} "
                "(size, spacing, origin or orientation differ); resample it first"
            )

        def prepare(folder) -> None:
            folder.add_volume("original", original)
            folder.add_volume("decoded", decoded)

        def finish(result, folder):
            from deepstd.worker import read_volume

            return self._show_residue(
                read_volume(result["residue"], folder),
                result["values"],
                original,
                original_node,
                decoded_node,
                residue_node,
                table_node,
            )

        return start_worker(
            "residue",
            prepare,
            on_progress=on_progress,
            on_done=on_done,
            on_error=on_error,
            finish=finish,
            name="DeepSTD residue",
        )

    def _show_residue(self, residue, values, original, original_node, decoded_node, residue_node, table_node):
        if residue_node is None:
            residue_node = self.scene.AddNewNodeByClass(
                "vtkMRMLScalarVolumeNode", self.scene.GenerateUniqueName(f"{decoded_node.GetName()} residue")
            )
        mrml.update_node_from_volume(residue_node, residue, cast=False)
        mrml.show_residue(residue_node)
        mrml.show_layers(self.scene, background=original_node, foreground=residue_node, foreground_opacity=0.5)
        values = {key: float(values[key]) for key in ("MAE", "PSNR", "SSIM")}
        table_node = table_node or self.scene.AddNewNodeByClass(
            "vtkMRMLTableNode", self.scene.GenerateUniqueName("DeepSTD quality")
        )
        mrml.fill_table(
            table_node,
            [{"Original": original_node.GetName(), "Decoded": decoded_node.GetName(), **values}],
            {"MAE": original.units, "PSNR": "dB"},
        )
        return residue_node, table_node, values

    def start_segment_metrics(
        self,
        segmentation_a,
        segmentation_b,
        reference_node=None,
        table_node=None,
        on_progress=None,
        on_done=None,
        on_error=None,
    ) -> Job:
        """Dice and HD95 per segment of two segmentations (matched by name), computed in the
        worker process; done gets (table node, rows)."""
        reference_node = reference_node or segmentation_a.GetNodeReference(
            slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
        )
        if reference_node is None:
            from deepstd.errors import InputError

            raise InputError("choose a reference volume: the segmentation has no reference geometry")
        spacing = tuple(reference_node.GetSpacing())
        masks_a = mrml.segment_masks(segmentation_a, reference_node)
        masks_b = mrml.segment_masks(segmentation_b, reference_node)
        pairs = mrml.pair_segments(list(masks_a), list(masks_b))
        arrays = {}
        for n, (name_a, name_b) in enumerate(pairs):
            arrays[f"a{n}"], arrays[f"b{n}"] = masks_a[name_a], masks_b[name_b]

        def finish(result, folder):
            rows = result["rows"]
            node = table_node or self.scene.AddNewNodeByClass(
                "vtkMRMLTableNode", self.scene.GenerateUniqueName("DeepSTD segment metrics")
            )
            mrml.fill_table(node, rows, {"HD95": "mm", "Volume A": "ml", "Volume B": "ml"})
            return node, rows

        return start_worker(
            "segment_metrics",
            lambda folder: folder.add_arrays("masks", arrays),
            options={"pairs": pairs, "spacing": spacing},
            on_progress=on_progress,
            on_done=on_done,
            on_error=on_error,
            finish=finish,
            name="DeepSTD segment metrics",
        )

    def compute_residue(self, original_node, decoded_node, residue_node=None, table_node=None):
        """Blocking `start_residue`: (residue node, table node, values)."""
        box = {}
        job = self.start_residue(
            original_node,
            decoded_node,
            residue_node,
            table_node,
            on_done=lambda result: box.setdefault("result", result),
            on_error=lambda error: box.setdefault("error", error),
        )
        return _finish(job, box)

    def compute_segment_metrics(self, segmentation_a, segmentation_b, reference_node=None, table_node=None):
        """Blocking `start_segment_metrics`: (table node, rows)."""
        box = {}
        job = self.start_segment_metrics(
            segmentation_a,
            segmentation_b,
            reference_node,
            table_node,
            on_done=lambda result: box.setdefault("result", result),
            on_error=lambda error: box.setdefault("error", error),
        )
        return _finish(job, box)


def slab_around(grid: "Frame", ras, normal, half_width: int = 4):
    """The voxel box of a `.dstd` file's grid (`DstdHeader.grid`) around a plane (RAS point and
    normal): along the grid axis closest to the normal, the 2·half_width + 1 slices nearest the
    plane; whole along the others. Slicer works in RAS, the file in LPS."""
    size = [int(n) for n in grid.size]
    direction = np.asarray(grid.direction, dtype=float).reshape(3, 3)
    flip = np.array([-1.0, -1.0, 1.0])
    point, normal_lps = np.asarray(ras, float) * flip, np.asarray(normal, float) * flip
    index = np.linalg.solve(direction * np.asarray(grid.spacing, float), point - np.asarray(grid.origin, float))
    axis = int(np.argmax(np.abs(direction.T @ normal_lps)))
    centre = int(np.clip(np.round(index[axis]), 0, size[axis] - 1))
    lo, hi = [0, 0, 0], list(size)
    lo[axis], hi[axis] = max(0, centre - half_width), min(size[axis], centre + half_width + 1)
    return tuple(lo), tuple(hi)


def _bundle_modality(name_or_path: str) -> Optional[str]:
    """The modality ("CT", "MR") a bundle serves, or None if it cannot be read here."""
    for info in codec.bundle_catalog():
        if name_or_path in (info.name, info.path):
            return info.modality
    try:
        return str(codec.bundles().load_bundle(name_or_path).config.modality).upper()
    except Exception:  # an unreadable bundle fails later, with its own message
        return None


def describe_error(error: BaseException):
    """(message, details) for an error dialog: one clear sentence, and the technical details
    (the worker's traceback or stderr, or this process's traceback) only where they help.
    A DeepSTD error (bad input, corrupt file, wrong bundle, impossible budget) is its message."""
    import traceback

    from .jobs import WorkerError

    try:
        from deepstd.errors import DeepSTDError
    except ImportError:  # deepstd itself not importable: every error is unexpected
        DeepSTDError = ()  # noqa: N806
    if isinstance(error, WorkerError):  # crash, signal, garbage or a bug: what the worker left
        return str(error), error.details or None
    if isinstance(error, DependencyInstallError):  # pip's or PyTorchUtils' own error as the details
        cause = error.__cause__ or error
        return str(error), "".join(traceback.format_exception(type(cause), cause, cause.__traceback__))
    if isinstance(error, DeepSTDError) or isinstance(error, codec.CodecUnavailable):
        return str(error), None
    details = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    return f"{type(error).__name__}: {error}" if not str(error) else str(error), details


def is_cancel(error: BaseException) -> bool:
    """A cancel the user asked for: shown as "Cancelled.", never as an error dialog."""
    if getattr(error, "kind", None) == "Cancelled":
        return True
    try:
        from deepstd.errors import Cancelled
    except ImportError:
        return False
    return isinstance(error, Cancelled)


def install_plan() -> List[str]:
    """What installing the dependencies would install, one line each: the dependencies module's
    own plan when it has one, else the missing import names."""
    from . import dependencies

    for name in ("install_plan", "plan", "what_would_be_installed"):
        plan = getattr(dependencies, name, None)
        if callable(plan):
            try:
                return [str(line) for line in plan()]
            except Exception:  # a plan that cannot be made: fall back to the names
                break
    return list(dependencies.missing())


def ensure_dependencies(confirm: Callable[[str], bool]) -> bool:
    """Install what deepstd still needs after `confirm(message)` agrees, listing what will be
    installed; True when everything is there, False if the user declined. Failures raise
    `DependencyInstallError` with the cause attached, for an error dialog."""
    from . import dependencies

    if not dependencies.missing():
        return True
    plan = install_plan()
    message = (
        "DeepSTD needs these Python packages, which are not installed yet:\n\n"
        + "\n".join(f"  {line}" for line in plan)
        + "\n\nPyTorch comes from the PyTorch extension (CPU or CUDA build for this computer), the "
        "others from the Python Package Index. Install them now? This can take several minutes."
    )
    if not confirm(message):
        return False
    try:
        return bool(dependencies.ensure(lambda _message: True))  # already confirmed above
    except Exception as error:
        raise DependencyInstallError(f"Could not install DeepSTD's Python packages: {error}") from error


class DependencyInstallError(RuntimeError):
    """Installing the dependencies failed (no network, no PyTorch extension, pip error)."""


def _finish(job: Job, box: Dict[str, Any]):
    """Wait for a job, delivering its events here as they come, and return its result or raise
    its error."""
    while job.poll():
        job.wait(0.05)
    if "error" in box:
        raise box["error"]
    return box.get("result")
