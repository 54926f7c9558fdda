"""`python -m cli`: the same as `tp`."""

from cli.app import main

main()
