"""The upload gateway: a stateless aiohttp service that takes images from producers, stores them in
the object store and publishes one ``image.uploaded`` event per stored image.

``create_app`` builds the application from explicit dependencies (tests pass in-memory fakes);
``python -m api.gateway`` reads the configuration once and serves it.
"""

from api.gateway.app import create_app
from api.gateway.config import GatewayConfig

__all__ = ["GatewayConfig", "create_app"]
