"""JSON Schemas of vouch's own predicate types, shipped as package data (one file per type)."""
