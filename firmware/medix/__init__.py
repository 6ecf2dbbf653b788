"""Medix: the protocol between an imaging center's node (AFRA) and a hub.

`medix.models` holds every message both sides exchange; `medix.openapi` renders them as an
OpenAPI 3.1 document; `medix.hub` is the reference hub used by tests, demos and vendors.
"""
