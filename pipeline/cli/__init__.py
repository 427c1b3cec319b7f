"""The ``cmbdetect`` command line (the top layer: may import every other layer); ``main.main`` is the entry point."""
