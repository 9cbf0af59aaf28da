"""Converters from other bhyve managers' guest descriptions to domain definitions.

Each converter is pure (it is given the files' text) and reports every setting it
cannot carry over instead of guessing.
"""
