"""`tp`, the trigger plane's command line: its HTTP API from a terminal or a script."""
