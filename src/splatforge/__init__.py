"""splatforge: photos or a video in, a 3D Gaussian Splatting scene out.

Import order matters here: pycolmap 4.2.1 corrupts the heap when it is the first native
module of a process and Pillow later saves a PNG (see ``shared/NOTES.md``). Importing
``zlib`` and ``numpy`` first avoids it, so the package does that before anything else.
"""

import zlib  # noqa: F401  (import-order guard, see module docstring)

import numpy  # noqa: F401  (import-order guard, see module docstring)

__version__ = "0.1.0"
