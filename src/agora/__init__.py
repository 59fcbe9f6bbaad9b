"""Agora: one server for web, files, mail, bank and hosted SQL, behind one user directory."""

__version__ = "0.1.0"
