"""The web console: prompts, experiments, evaluations and the request log in a browser,
served by the gateway under `/console` on the platform's HTTP server (`services.console.app`)."""
