"""What every part of vouch shares: the error tree and small value types.

Kept tiny on purpose: ``probes`` and ``loadtests`` may import this package and
nothing else of vouch, so it must never grow a dependency on ``rollout`` or
``daemon``.
"""
