"""Probing what was distilled: labels and splits, probes, results tables, and small specialised teachers."""
