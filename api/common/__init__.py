"""HTTP plumbing the two services share (logs, errors, metrics, health, process runtime).

Only ``api.gateway`` and ``api.stats`` import it; the library never does.
"""
