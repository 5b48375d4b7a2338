"""``expert-cli serve``: an OpenAI-compatible HTTP server over one base model and its experts."""
