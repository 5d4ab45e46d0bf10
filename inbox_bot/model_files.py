"""Where the classifier model lives, found without importing spaCy.

The main process of a worker setup never classifies (the workers load the model), yet a wrong
model path must still fail at start-up: ``check_model_dir`` is that check, costing a stat().
"""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

MODEL_ENV = "INBOX_BOT_MODEL"
REPO_MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / "intake"


def packaged_model_dir() -> Path | None:
    """Where a wheel puts the model (pyproject force-includes models/intake there)."""
    try:
        candidate = resources.files("inbox_bot") / "models" / "intake"
    except (ModuleNotFoundError, TypeError):
        return None
    path = Path(str(candidate))
    return path if (path / "config.cfg").is_file() else None


def default_model_path() -> Path:
    """$INBOX_BOT_MODEL, else the installed package's model, else the checkout's models/intake."""
    override = os.environ.get(MODEL_ENV, "").strip()
    if override:
        return Path(override).expanduser()
    return packaged_model_dir() or REPO_MODEL_DIR


def check_model_dir(path: Path | None = None) -> Path:
    """The model directory (``path`` or the default); FileNotFoundError when it holds none."""
    model_dir = Path(path) if path is not None else default_model_path()
    if not (model_dir / "config.cfg").is_file():
        raise FileNotFoundError(f"no classifier model at {model_dir}")
    return model_dir
