"""What the two HTTP services share: HTTP conventions (``httpkit``: logs, errors, metrics, health),
the service runtime (``runtime``: start with retries, serve until a signal, exit codes) and, for
tests and benchmarks, a service as a child process (``process``).

Only ``api.gateway``, ``api.stats`` and their tests and benchmarks import it; the library never does.
"""
