"""Python clients of a TFaaS-compatible model server (``mlaas4hep serve`` or TFaaS).

::

    from mlaas4hep.client import Client

    with Client("http://localhost:8083", token=None) as client:
        client.upload("mlp", "model.onnx", labels=["background", "signal"])
        client.predict([[0.1, 0.2, 0.3, 0.4]], keys=["a", "b", "c", "d"], model="mlp")

:class:`AsyncClient` has the same methods for ``asyncio``. The ``mlaas4hep
client`` command (:mod:`mlaas4hep.client.command`) wraps them with TFaaS's
client flags.
"""

from mlaas4hep.client.library import (
    DEFAULT_URL,
    AsyncClient,
    Client,
    EventPredictions,
    ServerError,
    ServerUnreachable,
)

__all__ = [
    "DEFAULT_URL",
    "AsyncClient",
    "Client",
    "EventPredictions",
    "ServerError",
    "ServerUnreachable",
]
