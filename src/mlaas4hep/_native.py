"""Load order of native libraries that clash.

TensorFlow's shared libraries, once loaded, make the XRootD client's Python
extension crash with a segmentation fault when it is imported afterwards (the
other order works). Keras imports TensorFlow whenever it is installed, even on
the torch backend. Every place that may bring TensorFlow in calls
:func:`load_xrootd_first` before it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys


def load_xrootd_first() -> None:
    """Import the XRootD client now, if it is installed and TensorFlow is not yet loaded."""
    if "tensorflow" in sys.modules or importlib.util.find_spec("XRootD") is None:
        return
    with contextlib.suppress(ImportError):
        importlib.import_module("XRootD.client")
