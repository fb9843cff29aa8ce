"""Loaded models: which version of each model serves, loading, caching, errors.

:class:`ModelManager` sits between the repository (files) and the API (requests).
It loads a version on first use (or at start), keeps at most ``cache_size``
versions loaded (least recently used ones are unloaded), and records every load
failure. A version that fails to load never replaces the one serving: a request
that names no version gets the newest version that loads, and the failure is
shown by ``/models`` and ``/status``.

Which version serves a request that names none: the version tagged ``prod``
when there is one, else the newest version the version policy allows.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import OrderedDict
from collections.abc import Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlaas4hep.serve.backends import Backend, load_backend
from mlaas4hep.serve.batching import BatchingConfig, BatchObserver, DynamicBatcher
from mlaas4hep.serve.errors import ModelLoadError, ModelNotFound, ServeError, Unavailable
from mlaas4hep.serve.repository import ModelRepository, ModelVersion, VersionPolicy
from mlaas4hep.serve.triton_config import ModelConfig, apply_override, parse_model_config

CONFIG_FILE = "config.pbtxt"
"""Triton's model configuration, beside the version directories."""

log = logging.getLogger(__name__)

DEFAULT_TAG = "prod"
"""The tag that, when set, picks the version serving requests that name none."""

Key = tuple[str, int]


@dataclass(eq=False)
class ServedModel:
    """One loaded model version with its batcher."""

    version: ModelVersion
    backend: Backend
    batcher: DynamicBatcher
    loaded_at: float = field(default_factory=time.time)
    extras: dict[str, Any] = field(default_factory=dict)
    """Per-version state of the APIs (e.g. how TFaaS rows map to the inputs)."""

    @property
    def name(self) -> str:
        """The model's name."""
        return self.version.model

    def infer(
        self, inputs: Mapping[str, np.ndarray], *, checked: bool = False
    ) -> Coroutine[Any, Any, dict[str, np.ndarray]]:
        """Run ``inputs`` through the batcher, after checking them against the
        model unless the caller built them to fit (``checked``); awaited by the caller
        (the batcher's own coroutine: one frame fewer on the path of every request)."""
        return self.batcher.infer(inputs if checked else self.backend.check_inputs(inputs))

    def describe(self) -> dict[str, Any]:
        """Inputs, outputs, labels and feature names, as ``/models`` shows them."""
        backend = self.backend
        return {
            "platform": backend.platform,
            "inputs": [i.to_dict() for i in backend.inputs],
            "outputs": [o.to_dict() for o in backend.outputs],
            "classes": backend.labels,
            "features": backend.feature_names,
        }


@dataclass
class LoadFailure:
    """Why a version could not be loaded, and when that was found."""

    checksum: str
    error: str
    at: float = field(default_factory=time.time)


class ModelManager:
    """The loaded models of one server process.

    ``observer_for(name, version)`` optionally returns a callback the batcher
    of that version reports each model call to (the metrics).
    """

    def __init__(
        self,
        repository: ModelRepository,
        *,
        policy: VersionPolicy | None = None,
        batching: BatchingConfig | None = None,
        cache_size: int = 16,
        threads: int | None = None,
        device: str = "cpu",
        observer_for: Any = None,
    ) -> None:
        self.repository = repository
        self.policy = policy or VersionPolicy.parse(None)
        self.batching = batching or BatchingConfig()
        self.cache_size = max(1, cache_size)
        self.threads = threads
        self.device = device
        self.default_model: str | None = None
        self._observer_for = observer_for
        self._executor = ThreadPoolExecutor(
            max_workers=max(2, self.batching.instances + 1), thread_name_prefix="mlaas4hep-infer"
        )
        self._loaded: OrderedDict[Key, ServedModel] = OrderedDict()
        self._serving: dict[str, ServedModel] = {}
        self._failures: dict[Key, LoadFailure] = {}
        self._locks: dict[Key, asyncio.Lock] = {}
        self._fingerprint: str | None = None
        self.unloaded: set[str] = set()
        """Models unloaded explicitly (v2 repository API): not served until loaded again."""
        self.config_overrides: dict[str, str] = {}
        """Model configurations (JSON) given when a model was loaded over the v2 API."""

    # -- requests --------------------------------------------------------

    async def get(self, name: str | None, ref: int | str | None = None) -> ServedModel:
        """The loaded model for a request: ``name`` (or the default model) at
        version/tag ``ref`` (or the serving version)."""
        if not name:
            if not self.default_model:
                raise ModelNotFound(
                    "the request names no model and no default model is set (POST /params)"
                )
            name = self.default_model
        if ref is None:
            return self.current(name) or await self._serve_default(name)
        version = await self._run(self.repository.resolve, name, ref)
        return await self._load(version)

    def current(self, name: str) -> ServedModel | None:
        """The serving version of ``name`` when it is loaded (None: :meth:`get` loads
        it); for the prediction paths, which need no coroutine when it is."""
        served = self._serving.get(name)
        if served is not None:
            self._loaded.move_to_end((name, served.version.version))
        return served

    async def _serve_default(self, name: str) -> ServedModel:
        """Load and serve the best version of ``name`` that loads."""
        candidates = await self._run(self._candidates, name)
        errors = []
        for version in candidates:
            try:
                served = await self._load(version)
            except ModelLoadError as error:
                errors.append(f"version {version.version}: {error}")
                continue
            self._serving[name] = served
            return served
        raise Unavailable(f"model {name!r} has no version that loads: " + "; ".join(errors))

    def _candidates(self, name: str) -> list[ModelVersion]:
        """Versions to try for requests naming no version, best first: the
        ``prod`` tag, else the versions the policy allows, newest first; then,
        should none of those load, the older ones."""
        versions = self.repository.versions(name)
        by_number = {v.version: v for v in versions}
        tagged = self.repository.tags(name).get(DEFAULT_TAG)
        if tagged in by_number:
            return [by_number[tagged]]
        config = self.model_config(name)
        policy = (
            config.version_policy if config is not None and config.version_policy else self.policy
        )
        allowed = sorted(policy.select(sorted(by_number)), reverse=True)
        older = sorted((n for n in by_number if n not in allowed), reverse=True)
        return [by_number[n] for n in allowed + older]

    async def _load(self, version: ModelVersion) -> ServedModel:
        key = (version.model, version.version)
        served = self._loaded.get(key)
        if served is not None and served.version.checksum == version.checksum:
            self._loaded.move_to_end(key)
            return served
        failure = self._failures.get(key)
        if failure is not None and failure.checksum == version.checksum:
            raise ModelLoadError(failure.error)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            served = self._loaded.get(key)
            if served is not None and served.version.checksum == version.checksum:
                return served
            try:
                backend = await self._run(self._open, version)
            except ServeError as error:
                self._failures[key] = LoadFailure(version.checksum, str(error))
                log.warning("model %s version %s failed to load: %s", *key, error)
                raise ModelLoadError(str(error)) from None
            self._failures.pop(key, None)
            observer: BatchObserver | None = (
                self._observer_for(*key) if self._observer_for is not None else None
            )
            run = functools.partial(backend.predict, checked=True)  # checked per request
            config = await self._run(self.model_config, version.model)
            batching = config.batching if config is not None and config.batching else self.batching
            batcher = DynamicBatcher(run, batching, self._executor, observer=observer)
            served = ServedModel(version, backend, batcher)
            old = self._loaded.pop(key, None)
            self._loaded[key] = served
            log.info("model %s version %s loaded (%s)", *key, backend.platform)
            if old is not None:
                await self._close(old)
            await self._evict()
            return served

    def _open(self, version: ModelVersion) -> Backend:
        config = self.model_config(version.model)
        directory = self.repository.local_dir(version)
        params = config.backend_params() if config is not None else None
        return open_backend(directory, params=params, threads=self.threads, device=self.device)

    def model_config(self, name: str) -> ModelConfig | None:
        """The Triton configuration of ``name``: the one given when it was loaded over
        the v2 API, else its ``config.pbtxt``, else None (blocking: reads the file)."""
        text = self.repository.read_model_file(name, CONFIG_FILE)
        written = None if text is None else parse_model_config(text, name)
        override = self.config_overrides.get(name)
        return written if override is None else apply_override(written, override, name)

    async def _evict(self) -> None:
        while len(self._loaded) > self.cache_size:
            key, served = next(iter(self._loaded.items()))  # the least recently used
            del self._loaded[key]
            if self._serving.get(key[0]) is served:
                del self._serving[key[0]]
            await self._close(served)

    async def _close(self, served: ServedModel) -> None:
        await served.batcher.drain()
        served.backend.close()

    async def _run(self, function: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    # -- repository changes ----------------------------------------------

    async def refresh(self, *, force: bool = False) -> None:
        """Follow the repository: new versions replace serving ones (once they
        load), deleted versions are unloaded. Cheap when nothing changed."""
        fingerprint = await self._run(self.repository.fingerprint)
        if fingerprint == self._fingerprint and not force:
            return
        self._fingerprint = fingerprint
        await self._run(self.repository.scan)
        names = set(await self._run(self.repository.models))
        for key, served in list(self._loaded.items()):
            if key[0] not in names or not await self._exists(served.version):
                await self.unload(key[0], key[1])
        for name in list(self._serving):
            try:
                await self._promote(name)
            except ServeError as error:
                log.warning("model %s: %s", name, error)

    async def _exists(self, version: ModelVersion) -> bool:
        try:
            current = await self._run(self.repository.resolve, version.model, version.version)
        except ModelNotFound:
            return False
        return bool(current.checksum == version.checksum)

    async def _promote(self, name: str) -> None:
        """Serve the best loadable version of ``name`` (after a change); when
        none loads, the version serving now goes on serving."""
        previous = self._serving.pop(name, None)
        try:
            await self._serve_default(name)
        except ServeError:
            if previous is None:
                raise
            self._serving[name] = previous
            log.warning(
                "model %s: no newer version loads; version %s goes on serving",
                name,
                previous.version.version,
            )

    async def load_all(self) -> None:
        """Load the serving version of every model (``model_control: startup``)."""
        await self._run(self.repository.scan)
        self._fingerprint = await self._run(self.repository.fingerprint)
        for name in await self._run(self.repository.models):
            try:
                await self._serve_default(name)
            except ServeError as error:
                log.warning("model %s: %s", name, error)

    async def published(self, name: str) -> ServedModel:
        """After an upload: serve the new version of ``name``."""
        await self._promote(name)
        return self._serving[name]

    async def unload(self, name: str, version: int | None = None) -> None:
        """Unload ``name`` (one version or all); requests load it again on demand."""
        for key in [k for k in self._loaded if k[0] == name and version in (None, k[1])]:
            served = self._loaded.pop(key)
            if self._serving.get(name) is served:
                del self._serving[name]
            await self._close(served)
        for key in [k for k in self._failures if k[0] == name and version in (None, k[1])]:
            del self._failures[key]

    # -- introspection ---------------------------------------------------

    def serving(self, name: str) -> ServedModel | None:
        """The loaded version serving ``name``'s requests, if any."""
        return self._serving.get(name)

    def loaded(self) -> list[ServedModel]:
        """Every loaded version, least recently used first."""
        return list(self._loaded.values())

    def failed_models(self) -> list[str]:
        """Names of the models with versions that failed to load."""
        return sorted({key[0] for key in self._failures})

    def failures(self, name: str) -> dict[int, str]:
        """Load errors of ``name`` by version."""
        return {k[1]: f.error for k, f in self._failures.items() if k[0] == name}

    async def close(self) -> None:
        """Finish in-flight requests and unload everything."""
        for served in list(self._loaded.values()):
            await self._close(served)
        self._loaded.clear()
        self._serving.clear()
        self._executor.shutdown(wait=True)


def open_backend(
    directory: Path,
    *,
    params: Mapping[str, Any] | None = None,
    threads: int | None = None,
    device: str = "cpu",
) -> Backend:
    """Load the model files in ``directory``; any failure is a :class:`ModelLoadError`
    (or another :class:`ServeError`) whose message names files relative to it:
    clients never see the server's paths."""
    try:
        return load_backend(directory, params=params, threads=threads, device=device)
    except ServeError as error:
        raise type(error)(_relative(str(error), directory)) from error
    except Exception as error:
        raise ModelLoadError(_relative(f"cannot load the model: {error}", directory)) from error


def _relative(message: str, directory: Path) -> str:
    for prefix in {str(directory.resolve()), str(directory)}:
        message = message.replace(prefix + "/", "").replace(prefix, ".")
    return message
