"""`python -m serve.healthcheck`: exit 0 when the local server answers /health with 200.

The image's HEALTHCHECK. It reads the port as the server does (settings file, then
EVERGREEN_SERVE_PORT) and needs no API key (/health never does).
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from serve.settings import DEFAULT_SETTINGS, SETTINGS_ENV, SettingsError, load_settings

TIMEOUT_S = 3.0


def check(port: int, timeout: float = TIMEOUT_S) -> tuple[bool, str]:
    """(ready, what /health said) for the server on 127.0.0.1:`port`."""
    url = f"http://127.0.0.1:{port}/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200, f"{url}: {response.status}"
    except urllib.error.HTTPError as exc:
        return False, f"{url}: {exc.code}"
    except OSError as exc:
        return False, f"{url}: {exc}"


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    settings = Path(env.get(SETTINGS_ENV, DEFAULT_SETTINGS))
    try:
        port = load_settings(settings, env).port
    except SettingsError as exc:
        print(f"healthcheck: {exc}", file=sys.stderr)
        return 2
    ready, said = check(port)
    print(f"healthcheck: {said}", file=sys.stdout if ready else sys.stderr)
    return 0 if ready else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
