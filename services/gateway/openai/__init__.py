"""The gateway's OpenAI-compatible HTTP API (`/v1/chat/completions`, `/v1/completions`,
`/v1/embeddings`, `/v1/models`): `services.gateway.openai.app.openai_routes`."""
