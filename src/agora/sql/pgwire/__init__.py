"""The PostgreSQL wire protocol (v3) in front of the hosted SQL databases: frames.py and
messages.py (sans-IO parsing and encoding), session.py and query.py (the asyncio side),
catalog.py (psql's catalog queries answered from SQLite's schema), scram.py, types.py."""
