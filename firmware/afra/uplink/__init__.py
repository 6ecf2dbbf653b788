"""The uplink: the node's identity, its Medix client, and the worker that delivers studies."""
