"""Live fault scenarios: a faulty upstream, the proxy as a user runs it, the analyzer's proposal applied."""
