"""``vouch loadtest run|replay|scale``: load, traffic-replay and scale tests, standalone.

Each command lives in its own module and adds itself to :data:`loadtest_app`; this module only
holds the sub-app and imports them, so ``vouch --help`` lists them.
"""

from __future__ import annotations

import typer

loadtest_app = typer.Typer(
    help=(
        "Load, traffic-replay and scale tests with Locust (run as a subprocess, never inside vouch): the same "
        "runs the `loadtest` gate makes at a rollout step, standalone, with progress and --json.\n\n"
        "Example: vouch loadtest run http://127.0.0.1:8080 --users 20 --duration 30s --json"
    ),
    no_args_is_help=True,
)

from vouch.daemon import loadtest_replay, loadtest_run, loadtest_scale  # noqa: E402, F401  (each registers its command)
