"""The typed configuration: model, units, per-policy sections, operations sections and the policy resolver."""
