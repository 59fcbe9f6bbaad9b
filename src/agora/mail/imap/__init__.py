"""IMAP4rev1 (RFC 3501) with LITERAL+, SASL-IR, IDLE, UIDPLUS, MOVE, UNSELECT, ID,
ENABLE, NAMESPACE, CHILDREN and SPECIAL-USE, over the mail store.

  parser.py, grammar.py, commands.py, sequence.py, mutf7.py
                the sans-IO command reader: bytes in, typed commands out
  responses.py  the wire form of responses
  session.py    the state machine (+ folders.py, messages.py, fetch.py, search.py)
  view.py       a session's numbering of its selected mailbox and the changes it reports
  watch.py      one store watch per folder, fanned out to the sessions that selected it
  cache.py      serialised ENVELOPE/BODYSTRUCTURE and search fields, shared per process
  server.py     the "imap" (STARTTLS) and "imaps" listeners: asyncio, no threads
"""
