"""Resilience policies: each one stage of the pipeline, composed only by `proxy.pipeline`."""
