"""Thin framework adapters over :mod:`retrieval_pipeline` (translation only, no model logic)."""
