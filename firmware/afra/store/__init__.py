"""The study index and its work states."""
