"""Ray Serve embedding endpoint: OpenAI ``/v1/embeddings`` and TEI ``/embed`` over the shared
Encoder, with token-budget dynamic batching, input validation, API keys and Ray metrics.

Layers, each testable alone: ``protocol`` (request/response schemas, base64, Matryoshka),
``engine`` (tokenise, validate lengths, batch forward: no Ray, no HTTP), ``http`` (FastAPI
routes, auth, body limit, error shapes), ``app`` (the Serve deployment and its builder).
"""
