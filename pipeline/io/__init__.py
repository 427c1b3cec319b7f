"""Input and bottom-layer I/O: NIfTI, DICOM (vendor rules), BIDS inputs and names, truth tables, physics-map files,
atomic writes, output folders, provenance (imports only ``physics``)."""
