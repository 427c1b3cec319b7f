"""cmbdetect workflows: Nipype interfaces and ``init_*_wf`` factories (no logic of their own)."""
import os

os.environ.setdefault("NIPYPE_NO_ET", "1")  # never let nipype ask the network for updates
