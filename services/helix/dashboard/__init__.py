"""The web dashboard: runs, agents, DNAs and oracles in a browser, live, served over HTTP
from the suite's own process and event loop (docs/dashboard.md).

It is a client like any other: every page is made of the services' public gRPC calls,
made with the signed-in person's own token, so it sees exactly what their scopes allow
(the layering test keeps it from importing any service's internals).
"""
