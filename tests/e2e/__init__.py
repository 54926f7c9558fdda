"""End-to-end tests: the whole stack as processes, driven over HTTP like a user would."""
