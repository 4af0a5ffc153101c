"""Load, traffic-replay and scale tests with Locust, always as a subprocess. Imports nothing of rollout or daemon."""

if __name__ != "vouch.loadtests":
    raise ImportError(f"import this package as vouch.loadtests, not as {__name__!r}: one module, one name")
