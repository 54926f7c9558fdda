"""The registry: sole owner of workspaces, API keys, flows and triggers."""
