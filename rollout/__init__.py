"""Progressive delivery: the promotion engine, plans, gates, metric providers, platforms and state."""

if __name__ != "vouch.rollout":
    raise ImportError(f"import this package as vouch.rollout, not as {__name__!r}: one module, one name")
