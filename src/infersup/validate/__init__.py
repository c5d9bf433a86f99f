"""`infersup validate`: check profiles against the schema, the server's flags and known traps."""

from infersup.validate.engine import Finding, exit_code, validate

__all__ = ["Finding", "exit_code", "validate"]
