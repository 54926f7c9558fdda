"""The history service: a queryable projection of the `runs` bucket, one SQLite per replica."""
