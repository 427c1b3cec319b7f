"""cmbdetect pipeline: I/O (NIfTI, DICOM, BIDS), CLI, candidate tables, exports, reports, simulation."""
