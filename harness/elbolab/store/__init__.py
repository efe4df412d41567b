"""Storage: the results file (one run, schema-versioned, written atomically), the history
database (runs across commits, SQLite or PostgreSQL), and the commit graph read from git.

Imports only the model.
"""
