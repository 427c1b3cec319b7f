"""Simulated subjects with known truth: anatomy, veins, lesions, signal, BIDS / DICOM writers (imports only
``physics`` and ``pipeline.io``)."""
