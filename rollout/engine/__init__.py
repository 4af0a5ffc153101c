"""The promotion engine: pure decisions and the thin shell that carries them out."""
