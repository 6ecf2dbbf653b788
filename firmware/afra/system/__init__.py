"""The appliance's place in its operating system: systemd, the card's provisioning, the
running release and its A/B slot."""
