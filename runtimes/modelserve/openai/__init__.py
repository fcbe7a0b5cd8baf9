"""OpenAI-compatible routes: ``protocol`` (bodies, errors, field checks; no HTTP) and ``routes`` (the registry of
served models, the API key, the handler MLServer calls)."""
