"""The DeepSTDSlicer module's Qt-free parts (importable headless with slicer-core):
`mrml` (MRML <-> deepstd.Volume, RAS <-> LPS), `codec` (the seam to the deepstd codec), `jobs`
(background work, main-thread delivery), `core` (the GUI-free logic), `dependencies`
(first-use installation) and `io` (the .dstd reader/writer plugins)."""
