"""The reference Medix hub: the hub side of docs/medix.md, for tests, demos and PACS vendors.

`core` (`Hub`, the facade over the parts below, and `HubConfig`), its parts `policy`,
`nodes`, `commands`, `uploads`, `files`, `access`, `webhooks` and `listings`, `multipart`
(the part receiving and assembly both upload flows share), `codes`, `errors`, `store` (SQLite
and files), `ca` (the hub's certificate authority and receipt signatures), `physicians`,
`throttle`, `updates`, `app` (the Flask application), `server` (HTTPS with client
certificates, on medix.serving) and `cli` (`medix-hub`). This package imports nothing heavy on
its own; the node needs none of it (receipts are checked by medix.receipts).
"""
