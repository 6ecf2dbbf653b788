"""Medis codes: the per-study code a patient reads aloud or types on the hub, and its slip."""
