"""Trials of a candidate policy against real calls: what it would have changed, counted, never enforced.

`records` turns calls (a recorded event stream, or later the calls a proxy serves) into `CallRecord`s;
`simulate` replays them under the recorded policy and a candidate on simulated time (`Simulator`,
`replay`) and counts both (`Figures`). The analyzer's what-if (`analyze --what-if`) replays a recorded
window; a shadow trial would feed the same simulator live. This package reads config, events and the
policies' own logic (the real breaker and retry budget), never the server or the upstream client.
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
