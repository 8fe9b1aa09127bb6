"""Shadow trials: a proposal's candidate policy counted next to the live one before it is enforced.

`shadow.TrialManager` runs one trial at a time: the live config keeps enforcing, the candidate is
validated and resolved but never enforced, an evaluator is fed the proxy's own events from the trial's
start, and at the end a verdict compares the measured effect with the proposal's estimate; only a
promotion writes the config file (which the proxy then hot-reloads). `observed.ObservedEvaluator` is the
evaluator used when no other is given: it counts what the events themselves show.

The analyzer never imports this package (the app hands the embedded analyzer a `TrialManager` through a
protocol); this package may import the analyzer, config, events and policies.
"""
