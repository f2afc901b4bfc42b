"""The spec-driven trainer."""
