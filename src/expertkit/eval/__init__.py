"""Evaluating experts: task metrics (SQL execution, function calls, Cypher), against a baseline."""
