"""Dock widgets. Qt only through qtpy; no torch and no maths here."""
