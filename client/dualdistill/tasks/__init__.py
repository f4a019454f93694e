"""Built-in checkable tasks: query generators with known answers and verifiers for the pair filter."""
