"""The CLI loads sigstore-python and the Kubernetes client only for the commands that use them.

Each costs a fifth to a third of a second on import, which every `vouch` call in a CI step
would pay; their modules import them inside the functions that need them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HEAVY = ("sigstore", "kubernetes_asyncio")
EXAMPLE = Path(__file__).parents[2] / "examples" / "local.yaml"


def loaded_after(code: str) -> set[str]:
    """The heavy top-level packages in sys.modules after running ``code`` in a fresh interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    return set(json.loads(done.stdout.splitlines()[-1])) & set(HEAVY)


def test_the_cli_and_the_configuration_load_neither() -> None:
    assert loaded_after("import vouch.daemon.cli") == set()
    assert loaded_after(f"from vouch.daemon.config import load_config; load_config({str(EXAMPLE)!r})") == set()


def test_the_modules_that_need_them_still_load_them() -> None:
    assert loaded_after("from vouch.rollout.attestations.sigstore import SigstoreVerifier") == {"sigstore"}
    code = (
        "import asyncio, contextlib\nfrom vouch.rollout.platforms.kube.client import connect\n"
        "with contextlib.suppress(Exception):\n    asyncio.run(connect(kubeconfig='/nonexistent'))"
    )
    assert loaded_after(code) == {"kubernetes_asyncio"}
