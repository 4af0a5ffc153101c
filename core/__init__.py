"""What every part of vouch shares: the error tree and small value types.

Kept tiny on purpose: ``probes`` and ``loadtests`` may import this package and
nothing else of vouch, so it must never grow a dependency on ``rollout`` or
``daemon``.
"""

if __name__ != "vouch.core":
    raise ImportError(f"import this package as vouch.core, not as {__name__!r}: one module, one name")
