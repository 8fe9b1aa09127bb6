"""Failure events (schema v1): their types (envelope, types), how an emission becomes a record (build), the bus, the recorder, the sinks, and the JSON Schema generated from the types."""
