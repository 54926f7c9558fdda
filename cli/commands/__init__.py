"""`tp`'s commands, a module per resource; each defines its Typer `app`, wired in `cli.app`."""
