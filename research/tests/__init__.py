"""Tests of the research harnesses (pytest: python -m pytest research)."""
