"""Legacy sessions the proxy keeps so that an upstream restart is invisible to their clients.

`table` holds them (bounded), `keeper` records what each client set and rebuilds a lost one upstream,
`stage` is the pipeline's session position (routing, replay). The legacy GET stream that outlives an
upstream restart is the listener's (`proxy.server.session_stream`).
"""
