"""The bank: a double-entry ledger (accounts, immutable transfers, pending holds,
statements) in the metadata database, served over the HTTP API and web pages."""
