"""System updates: RAUC bundles into the other A/B slot, kept only after a self-test."""
