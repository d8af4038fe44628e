"""Teachers: the LLM that writes new labelled examples each cycle.

- ``generate.generate_job``: a planned job → validated examples table + accounting.
- ``openai``: async client for OpenAI-compatible chat-completions endpoints (retries).
- ``ratelimit``: the global requests/min and tokens/min limit per endpoint, in Redis.
- ``prompts`` / ``parsing``: the PGKD prompt, and reading and validating the answer.
- ``accounting``: tokens, latency, cost; the run's spend counter and budget caps.
- ``runtime``: the process-wide event loop and HTTP session that Celery threads share.
- ``sim``: distillq's own OpenAI-compatible *simulated* teacher, answering from real data.

See docs/teachers.md.
"""
