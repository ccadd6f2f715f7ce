"""The `helix` command line: `main` parses and dispatches; `client` holds what every command
that calls a server shares (address and credential flags, channels, error printing)."""
