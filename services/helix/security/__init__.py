"""Authentication and authorisation: JWT keys and tokens, scopes, ownership, rate limits."""
