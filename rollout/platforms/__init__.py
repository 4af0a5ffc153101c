"""Platforms: where versions of a service run (see ``base.Platform``)."""
