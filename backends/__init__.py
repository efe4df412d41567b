"""The backends elbolab ships: each sub-package exposes `backend`, an elbolab.model.backend.Backend.

Each imports its library lazily (inside functions), so the registry loads even where a library is
missing and the backend can say why it is unavailable.
"""
