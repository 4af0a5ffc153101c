"""The policy worker: a process that evaluates one Rego policy for :class:`~.isolated.IsolatedRegoPolicy`.

Run as ``python -m vouch.rollout.policy.worker``. It speaks JSON lines: the first line it reads is
the policy (``{"sources": {name: text}, "query": str}``), answered with ``{"ready": true}`` or with
``{"problems": [[file, line, message], ...]}`` when the policy does not compile; then each line it
reads is a policy input, answered with ``{"allow": bool, "denials": [str, ...], "failed": bool}``. It ends when its
input ends. Anything regopy does to this process (a crash, a loop that never returns) ends here, not
in the daemon.
"""

from __future__ import annotations

import json
import os
import sys
from typing import IO, Any

from vouch.core.errors import ConfigError
from vouch.rollout.policy.rego import RegoPolicy


def serve(requests: IO[bytes], replies: IO[bytes]) -> int:
    """Answer ``requests`` on ``replies`` as the module docstring says; the exit status."""
    header = requests.readline()
    if not header:
        return 0
    try:
        settings: dict[str, Any] = json.loads(header)
        policy = RegoPolicy(settings["sources"], query=settings["query"])
    except ConfigError as exc:
        _reply(replies, {"problems": [[p.file, p.line, p.message] for p in exc.problems]})
        return 1
    except (ValueError, KeyError, TypeError) as exc:
        _reply(replies, {"problems": [["policy", None, f"unreadable policy settings: {exc}"]]})
        return 1
    _reply(replies, {"ready": True})
    for line in requests:
        try:
            document = json.loads(line)
        except ValueError as exc:
            _reply(
                replies, {"allow": False, "denials": [f"policy input is not a JSON document: {exc}"], "failed": True}
            )
            continue
        decision = policy.evaluate(document)
        _reply(replies, {"allow": decision.allow, "denials": list(decision.denials), "failed": decision.failed})
    return 0


def _reply(replies: IO[bytes], answer: dict[str, Any]) -> None:
    replies.write(json.dumps(answer, ensure_ascii=False).encode() + b"\n")
    replies.flush()


def main() -> int:
    # Replies get their own copy of stdout; anything else written there (a Rego print(), a library's
    # message) goes to stderr instead, where it cannot be taken for an answer.
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    return serve(sys.stdin.buffer, replies)


if __name__ == "__main__":
    sys.exit(main())
