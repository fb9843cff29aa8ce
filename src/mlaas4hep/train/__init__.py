"""The training workflow: loaders, trainers, metrics, plots and export to a model package."""

from mlaas4hep._native import load_xrootd_first

# Keras brings TensorFlow in when it is installed; XRootD must be loaded before it.
load_xrootd_first()
