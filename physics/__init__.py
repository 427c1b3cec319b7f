"""MRI physics for cmbdetect: pure functions on arrays and voxel geometry (no files, no CLI).

Conventions used throughout (see each docstring):

* susceptibility ``chi`` in ppm; fields in ppm of B0 unless a name ends in ``_hz``;
  echo times in seconds; B0 in tesla; lengths in mm.
* sign: a paramagnetic source (chi > 0) raises the local frequency, and
  ``phase = +2*pi*gamma_bar*B0*dB*TE`` with ``dB = field_ppm * 1e-6``.
* arrays are indexed ``[i, j, k]`` in the NIfTI voxel order; 4D data are ``[echo, i, j, k]``;
  the B0 direction is scanner z expressed in voxel axes (:func:`geometry.b0_direction`).
"""
