"""OpenAI-compatible LLM gateway: global rate limits, retries, response cache, accounting."""
