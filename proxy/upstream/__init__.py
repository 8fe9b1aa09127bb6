"""Everything that speaks to upstreams: the transport (one error-mapping boundary) and the HTTP/1.1 client."""
