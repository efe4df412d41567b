"""Gating across revisions: a revision checked out, installed and built (revisions), the A/B
gate that measures two revisions together (ab), and measuring past commits into the history
store (backfill) or bisecting a regression to its commit (bisect).

Imports measuring, analysis, the store and the model; never the report or the CLI.
"""
