"""Python code common to the services: settings, NATS wiring, supervision, identifiers."""
