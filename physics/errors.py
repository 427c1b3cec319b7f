"""The one exception type for bad user input.

Raise :class:`InputError` with a single-line, human message (what is wrong and what to do) for any
problem with the data or parameters a user supplied: missing echo time, shape/affine mismatch, 2D
data, NaNs, wrong phase units, unreadable file, empty mask.  The CLI prints ``error: <message>`` on
stderr and exits non-zero; it never shows a traceback for this type.
"""


class InputError(ValueError):
    """Bad input supplied by the user (one-line message)."""
