"""What every endpoint of one server process shares."""

from __future__ import annotations

import itertools
import os
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from mlaas4hep.serve.auth import Authorizer, Identity
from mlaas4hep.serve.config import ServerSettings
from mlaas4hep.serve.metrics import Metrics
from mlaas4hep.serve.models import ModelManager, ServedModel
from mlaas4hep.serve.repository import ModelRepository


@dataclass(eq=False)
class ServerState:
    """The settings, repository, loaded models, auth and metrics of the server."""

    settings: ServerSettings
    repository: ModelRepository
    models: ModelManager
    auth: Authorizer
    metrics: Metrics
    draining: bool = False
    """Set at shutdown: health checks answer "not ready" while requests finish."""
    _ids: itertools.count[int] = field(default_factory=itertools.count)
    _prefix: str = field(default_factory=lambda: f"{os.getpid():x}-{secrets.token_hex(3)}-")

    def request_id(self) -> str:
        """A new request id, unique across the server's processes."""
        return f"{self._prefix}{next(self._ids):x}"

    async def infer(
        self, served: ServedModel, inputs: Mapping[str, np.ndarray], *, checked: bool = False
    ) -> dict[str, np.ndarray]:
        """Run ``inputs`` through ``served`` (see :meth:`ServedModel.infer`), recording the
        request's latency and outcome in the metrics: every API infers through here."""
        started = time.perf_counter()
        failed = True
        try:
            outputs = await served.infer(inputs, checked=checked)
            failed = False
        finally:
            self.metrics.inference(served.name, time.perf_counter() - started, failed=failed)
        return outputs

    def authorize(self, authorization: str | None, scope: str) -> Identity | None:
        """Check an ``Authorization`` header value for ``scope`` (see :mod:`.auth`)."""
        return self.auth.check(authorization, scope)
