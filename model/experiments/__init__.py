"""Offline tools that study the method: benchmarks, the simulated annotator, and their reports.

The backend never imports this package; `python -m model bench|simulate|expansion` runs them.
"""
