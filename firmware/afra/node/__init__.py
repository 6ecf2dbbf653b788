"""The node side of Medix: what the hub asks of the box (downloads, report status, diagnostics)."""
