"""The PostgreSQL wire protocol (v3) in front of the hosted databases: frames.py and
messages.py (sans-IO parsing and encoding of the start-up), scram.py (the server's side
of SCRAM), session.py (start-up, authentication, then the relay), upstream.py (the
engine's side of the relay), server.py (the listener), workers.py (several processes)."""
