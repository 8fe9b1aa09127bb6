"""The command line: serve, validate, schema, analyze, replay, demo."""
