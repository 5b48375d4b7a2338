"""Workflows: orchestration that spans lifecycle stages (the curriculum: train → evaluate → gate, per
phase). Stages never import each other sideways for this; only the CLI (and later the job system)
sits above this package."""
