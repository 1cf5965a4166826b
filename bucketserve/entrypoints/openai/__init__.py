"""The OpenAI-compatible HTTP server: `bucketserve serve OUT-DIR` (see server.py)."""
