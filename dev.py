#!/usr/bin/env python3
"""Quick start on a machine that has only Python.

    python3 dev.py demo    # run the main job on the bundled sample mailbox
    python3 dev.py test    # run the whole test suite (installs Dovecot and Chromium with apt-get if missing)

Both create ./.venv and install the project into it on first use.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"


def sh(*cmd: str | Path, check: bool = True, env: dict[str, str] | None = None) -> int:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run([str(c) for c in cmd], check=check, env=env).returncode


def ensure_venv(extras: str = "") -> None:
    if not PY.exists():
        venv.EnvBuilder(with_pip=True).create(VENV)
        sh(PY, "-m", "pip", "install", "-q", "--upgrade", "pip")
    stamp = VENV / f".installed{extras or '-base'}"
    pyproject = ROOT / "pyproject.toml"
    if not stamp.exists() or stamp.stat().st_mtime < pyproject.stat().st_mtime:
        target = f"{ROOT}[{extras}]" if extras else str(ROOT)
        sh(PY, "-m", "pip", "install", "-q", "-e", target)
        stamp.touch()


# Debian packages the test suite uses, and the file that shows each is installed.
SYSTEM_PACKAGES = {"dovecot-imapd": "/usr/sbin/dovecot",   # the real IMAP server of the e2e tests
                   "chromium": "/usr/bin/chromium"}         # renders the digest HTML for a screenshot


def ensure_system_packages() -> None:
    missing = [pkg for pkg, path in SYSTEM_PACKAGES.items() if not Path(path).exists()]
    if not missing:
        return
    apt = shutil.which("apt-get")
    if not apt:
        print(f"dev.py: {', '.join(missing)} missing and apt-get is not available; "
              "the tests that need them will be skipped", file=sys.stderr)
        return
    prefix = [] if os.geteuid() == 0 else (["sudo"] if shutil.which("sudo") else None)
    if prefix is None:
        print(f"dev.py: need root (or sudo) to apt-get install {' '.join(missing)}", file=sys.stderr)
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    sh(*prefix, apt, "update", "-qq", env=env)
    sh(*prefix, apt, "install", "-y", "-qq", "--no-install-recommends", *missing, env=env)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("demo", "test"):
        print(__doc__)
        return 2
    if argv[0] == "demo":
        ensure_venv()
        return sh(BIN / "inbox-bot", "demo", *argv[1:], check=False)
    ensure_venv("test")
    ensure_system_packages()
    return sh(PY, "-m", "pytest", *(argv[1:] or ["-q"]), check=False)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
