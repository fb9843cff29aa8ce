"""Loading user Python files (models, preprocessing) by path, with clear errors.

A user file is imported from its path, absolute or relative; no ``PYTHONPATH``
setting is needed. Its own directory is importable while it loads, so a model
file may import a helper module that sits beside it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from mlaas4hep.data.rootfile import describe_exception
from mlaas4hep.errors import ConfigError


def load_user_module(path: str | Path, *, what: str, prefix: str) -> tuple[ModuleType, str]:
    """Import the Python file at ``path``; return the module and the file's SHA-256.

    ``what`` names the file in errors ("model file", "preprocessing module").
    """
    source = Path(path)
    if not source.is_file():
        raise ConfigError(f"{what} not found: {source}")
    data = source.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    spec = importlib.util.spec_from_file_location(f"{prefix}_{source.stem}_{digest[:8]}", source)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot load {source} as a Python module")
    module = importlib.util.module_from_spec(spec)
    folder = str(source.resolve().parent)
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise ConfigError(
            f"importing the {what} {source} failed: {describe_exception(exc)}"
        ) from exc
    finally:
        sys.path.remove(folder)
    return module, digest
