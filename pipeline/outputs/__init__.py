"""What a run hands the reader: candidate tables, 3D Slicer markups, DICOM SR / SEG / key images, BIDS
derivatives, the HTML report, review (imports ``physics``, ``pipeline.io`` and ``models``)."""
