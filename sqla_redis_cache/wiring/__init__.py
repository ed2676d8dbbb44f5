"""wiring layer (see docs/architecture.md)."""
