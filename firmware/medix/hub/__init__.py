"""The reference Medix hub: the hub side of docs/medix.md, for tests, demos and PACS vendors.

`ca` (the hub's certificate authority and receipt signatures; importable without Flask, the
node uses `verify_receipt`), `store` (SQLite and files), `app` (the Flask application),
`server` (HTTPS with client certificates, via cheroot) and `cli` (`medix-hub`). This package
imports nothing heavy on its own, so `medix.hub.ca` stays cheap for the node.
"""
