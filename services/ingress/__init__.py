"""The ingress: the HTTP API (Litestar), including the API trigger's hot path."""
