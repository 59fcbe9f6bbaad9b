"""Hosted SQL databases: SQLite files on the server, queried over HTTP and the
PostgreSQL wire protocol (see hosted.py for the domain)."""
