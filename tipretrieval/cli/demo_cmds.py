"""CLI commands (placeholder until implemented)."""

commands: list = []
