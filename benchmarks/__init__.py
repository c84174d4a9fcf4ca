"""Measurements of the library and its experiments (see each module)."""
