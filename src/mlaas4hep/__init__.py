"""mlaas4hep: Machine Learning as a Service for High Energy Physics.

Three independent layers:

* :mod:`mlaas4hep.data` streams ROOT TTree / RNTuple data in chunks from local or
  remote files, many files interleaved and shuffled;
* the training layer turns jagged arrays into fixed tensors and trains models;
* the inference layer serves the exported models.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
