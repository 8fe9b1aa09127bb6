"""Failure events: the recorder and bus, sinks, and the JSON Schema of what the analyzer reads."""
