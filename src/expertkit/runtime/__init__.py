"""Running experts: load them on their base model (checked against their lock), decode, validate."""
