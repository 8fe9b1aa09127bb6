"""Trials of a candidate policy against real calls: what it would have changed, counted, never enforced.

`records` turns calls (a recorded event stream, or the events a proxy publishes live) into `CallRecord`s;
`simulate` replays them under the recorded policy and a candidate on simulated time (`Simulator`,
`replay`) and counts both (`Figures`). The analyzer's what-if (`analyze --what-if`) replays a recorded
window. `shadow.TrialManager` runs a shadow trial: the live config keeps enforcing, the candidate is
validated and resolved but never enforced, an evaluator is fed the proxy's own events from the trial's
start, and at the end a verdict compares the measured effect with the proposal's estimate; only a
promotion writes the config file (which the proxy then hot-reloads).

The analyzer never imports this package (the app hands the embedded analyzer a `TrialManager` through a
protocol); this package may import the analyzer, config, events and the policies' own logic (the real
breaker and retry budget), never the server or the upstream client.
"""

from proxy.trials.records import AttemptRecord, CallRecord, records_from_events
from proxy.trials.simulate import FIGURES, AttemptRates, Figures, SimClock, Simulator, Tally, replay

__all__ = [
    "FIGURES",
    "AttemptRates",
    "AttemptRecord",
    "CallRecord",
    "Figures",
    "SimClock",
    "Simulator",
    "Tally",
    "records_from_events",
    "replay",
]
