"""The Data Training Layer's transforms: jagged arrays to tensors.

* :mod:`~mlaas4hep.transform.spec` — the versioned feature spec (``features.json``);
* :mod:`~mlaas4hep.transform.scan` — the first pass that computes it;
* :mod:`~mlaas4hep.transform.vector` — flat ``[N, F]`` and grouped ``[N, C, L]`` tensors;
* :mod:`~mlaas4hep.transform.matrix` — event images ``[N, C, H, W]``;
* :mod:`~mlaas4hep.transform.normalize` — per-feature normalisation;
* :mod:`~mlaas4hep.transform.preprocess` — user selection, derived variables, labels;
* :mod:`~mlaas4hep.transform.writers` — Parquet / HDF5 / npz output.

Mask convention, everywhere: 1 = real value, 0 = padding.
"""
