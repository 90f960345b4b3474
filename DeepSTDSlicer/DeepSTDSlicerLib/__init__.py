"""The DeepSTDSlicer module's Qt-free parts (importable headless with slicer-core):
`mrml` (MRML <-> deepstd.Volume, RAS <-> LPS), `codec` (the seam to the deepstd codec), `jobs`
(background work, main-thread delivery), `core` (the GUI-free logic), `dependencies`
(first-use installation), `io` (the .dstd reader/writer plugins) and `dicom_plugin` (DeepSTD
DICOM objects in the DICOM browser)."""
