"""The quality study behind experiments/quality_table.py: config, data, runs, report (docs/results.md)."""
