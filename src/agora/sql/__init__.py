"""Hosted SQL databases: real PostgreSQL databases on the engine Agora runs or uses,
reached over HTTP, the console and the PostgreSQL wire protocol (see hosted.py for the
domain, engine.py for the engine)."""
