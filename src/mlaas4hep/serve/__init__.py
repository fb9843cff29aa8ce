"""The Data Inference Layer: a model repository, inference backends and the HTTP server.

- :mod:`mlaas4hep.serve.repository`: versioned models on disk or any fsspec URL;
- :mod:`mlaas4hep.serve.backends`: ONNX Runtime, TorchScript, XGBoost, TensorFlow;
- :mod:`mlaas4hep.serve.app`: the ASGI application (TFaaS API, status, metrics);
- :mod:`mlaas4hep.serve.server`: ``mlaas4hep serve``.
"""
