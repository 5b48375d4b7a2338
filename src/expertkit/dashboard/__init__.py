"""``expert-cli dashboard``: a web UI over the job queue, the worker registry and the files expertkit
writes. It reads the same backend and files as the CLI and never loads a model."""
