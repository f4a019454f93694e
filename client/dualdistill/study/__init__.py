"""The quality study's statistics: per-query metrics and bootstrap confidence intervals over queries."""
