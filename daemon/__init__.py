"""The vouch process: configuration, state store, HTTP API, CLI, and the demo."""

if __name__ != "vouch.daemon":
    raise ImportError(f"import this package as vouch.daemon, not as {__name__!r}: one module, one name")
