"""`evergreen dispatch`: run the retrain workflow through GitHub's REST API, with overrides.

The call is GitHub's workflow-dispatch endpoint:
    POST {GITHUB_API_URL}/repos/{owner}/{repo}/actions/workflows/{workflow}/dispatches
    Authorization: Bearer <token>   {"ref": "main", "inputs": {"overrides": "model=hgb ..."}}
Overrides are checked against conf/ before anything is sent (the workflow checks them again).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import requests

from stages.cli.overrides import OverrideError, parse_overrides, validate_overrides
from stages.lib.params import CONF_DIR

TOKEN_VARS = ("EVERGREEN_GITHUB_TOKEN", "GITHUB_TOKEN")
REPO_RE = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class DispatchRequest:
    url: str
    ref: str
    overrides: str

    def body(self) -> dict:
        return {"ref": self.ref, "inputs": {"overrides": self.overrides}}

    def headers(self, token: str) -> dict[str, str]:
        return {
            "Accept": "application/vnd.github+json",
            "Authorization": f"Bearer {token}",
            "X-GitHub-Api-Version": "2022-11-28",
        }


def repo_from_git(cwd: Path | None = None) -> str | None:
    """owner/name from the `origin` remote (https or ssh form), if it is on GitHub."""
    try:
        url = subprocess.run(
            ["git", "remote", "get-url", "origin"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    match = re.search(r"github\.com[:/]([^/]+/[^/]+?)(\.git)?$", url)
    return match.group(1) if match else None


def build_request(
    repo: str, workflow: str, ref: str, overrides: str, api_url: str
) -> DispatchRequest:
    if not REPO_RE.match(repo):
        raise ValueError(f"--repo: expected OWNER/NAME, got {repo!r}")
    url = f"{api_url.rstrip('/')}/repos/{repo}/actions/workflows/{workflow}/dispatches"
    return DispatchRequest(url=url, ref=ref, overrides=overrides)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="evergreen dispatch",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--set", dest="items", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--repo", help="OWNER/NAME (default: $GITHUB_REPOSITORY, else origin)")
    parser.add_argument("--workflow", default="retrain.yml")
    parser.add_argument("--ref", default="main")
    parser.add_argument("--conf", default=CONF_DIR, type=Path)
    parser.add_argument("--dry-run", action="store_true", help="print the request, send nothing")
    args = parser.parse_args(argv)

    try:
        overrides = parse_overrides(args.items)
        validate_overrides(args.conf, overrides)
        repo = args.repo or os.environ.get("GITHUB_REPOSITORY") or repo_from_git()
        if not repo:
            raise ValueError("no repository: pass --repo OWNER/NAME")
        api_url = os.environ.get("GITHUB_API_URL", "https://api.github.com")
        request = build_request(
            repo, args.workflow, args.ref, " ".join(map(str, overrides)), api_url
        )
    except (OverrideError, ValueError, OSError) as exc:  # OSError: no conf/ there
        print(f"evergreen dispatch: {exc}", file=sys.stderr)
        return 2
    token = next((os.environ[v] for v in TOKEN_VARS if os.environ.get(v)), None)
    if args.dry_run:
        headers = request.headers("***" if token else "<no token set>")
        print(
            json.dumps(
                {"method": "POST", "url": request.url, "headers": headers, "json": request.body()},
                indent=2,
            )
        )
        return 0
    if not token:
        print(
            f"evergreen dispatch: set one of {', '.join(TOKEN_VARS)} (a token allowed to run "
            "workflows: actions:write)",
            file=sys.stderr,
        )
        return 2
    response = requests.post(
        request.url, json=request.body(), headers=request.headers(token), timeout=30
    )
    if response.status_code != 204:
        print(
            f"evergreen dispatch: GitHub answered {response.status_code}: {response.text[:500]}",
            file=sys.stderr,
        )
        return 1
    print(
        f"dispatched {args.workflow} on {repo}@{args.ref} with overrides: "
        f"{request.overrides or '(none)'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
