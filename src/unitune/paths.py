"""Where unitune keeps what it builds and caches: ``$UNITUNE_HOME`` (default
``~/.cache/unitune``), holding the tiny presets (``models/``), their tokenizers
(``tokenizers/``), prepared training data (``cache/data/``) and downloaded catalog data
(``data/``, unless ``$UNITUNE_DATA_DIR`` says otherwise)."""

from __future__ import annotations

import os
from pathlib import Path


def unitune_home() -> Path:
    return Path(os.environ.get("UNITUNE_HOME", Path.home() / ".cache" / "unitune"))
