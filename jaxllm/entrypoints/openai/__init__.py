"""The OpenAI-compatible server (`jaxllm serve`): FastAPI app, request/response schema, handlers,
errors and Prometheus metrics. Importing this package loads nothing heavy; see api_server.py."""
