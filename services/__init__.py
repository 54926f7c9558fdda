"""The four services of the trigger plane; `python -m services` runs them all locally."""
