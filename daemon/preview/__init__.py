"""Ephemeral preview environments: a pull request's artifact stood up alone, with mocked backends."""
