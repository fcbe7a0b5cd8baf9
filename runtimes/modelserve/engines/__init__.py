"""The engines: supervised engine servers and their clients (vLLM, Infinity, Ollama), in-process faster-whisper and
the transformers calls. No V2 and no HTTP routes here: backends/ map those onto an engine."""
