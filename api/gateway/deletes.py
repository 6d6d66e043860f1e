"""``DELETE /v1/images/{image_id}``: a producer deletes its own image.

204 when the image is the producer's (deleted now, or deleted already: a retry is safe and
publishes nothing more); 404 for an unknown id and for another producer's image alike (the same
body but for the id asked: no existence oracle over guessable ids); 400 for a malformed id. The
owner comes from the image's Cassandra row (:mod:`api.gateway.owners`); the deletion itself is an
``image.deleted`` event on ``deleted_topic``, keyed by image_id, which the pipeline applies: the
row's status becomes ``deleted`` (docs/gateway.md, "Deleting an image").
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, AsyncIterator

from aiohttp import web

from imgstream.domain.deletion import Decision, decide
from imgstream.domain.errors import BadRequest, NotFound, Unavailable
from imgstream.domain.events import ImageDeleted, canonical_image_id
from imgstream.domain.timefmt import format_time

from api.gateway.owners import OwnerLookup

if TYPE_CHECKING:
    from api.gateway.app import Gateway

log = logging.getLogger("imgstream.gateway")



class Deletions:
    """The DELETE handler, on the gateway's auth, rate limit, publisher, metrics and clock."""

    def __init__(self, gateway: "Gateway", owners: OwnerLookup | None, body_unread: web.RequestKey[bool]) -> None:
        self.gateway = gateway
        self.owners = owners
        self.body_unread = body_unread  # set when a body was left unread: the connection then closes

    def add_routes(self, app: web.Application) -> None:
        """The route, and the owner look-up's start and close with the app."""
        # any one path segment reaches the handler, so every malformed id gets the same 400
        app.router.add_delete("/v1/images/{image_id:[^/]+}", self.delete_image)
        app.cleanup_ctx.append(self.lifecycle)

    async def lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        if self.owners is not None:
            await self.owners.start()
        yield
        if self.owners is not None:
            await self.owners.close()

    async def delete_image(self, request: web.Request) -> web.StreamResponse:
        """``DELETE /v1/images/{image_id}`` (see the module doc)."""
        gateway = self.gateway
        if request.body_exists:
            request[self.body_unread] = True  # a DELETE's body means nothing: never read
        principal = gateway.authenticate(request)
        gateway.charge(principal.name)  # deletions share the producer's budget with uploads
        try:
            image_id = canonical_image_id(request.match_info["image_id"])
        except ValueError as exc:
            raise BadRequest(str(exc), reason="invalid_image_id", field="image_id") from None
        if self.owners is None:
            raise Unavailable("this gateway was built without an owner look-up", reason="deletions_off")
        decision = decide(principal.name, await self.owners.owner(image_id))
        if decision is Decision.NOT_FOUND:
            gateway.metrics.deletions.labels(decision.value).inc()
            raise NotFound(f"no image {image_id} of this producer", reason="image_not_found")
        if decision is Decision.DELETE:
            event = ImageDeleted(image_id=image_id, producer=principal.name,
                                 requested_at=format_time(gateway.clock()), gateway=gateway.config.gateway_id)
            await gateway.publisher.publish(
                gateway.config.deleted_topic, key=image_id.encode(), value=event.to_json(),
                headers=(("event_type", event.event_type.encode()),
                         ("schema_version", str(event.schema_version).encode())))
        gateway.metrics.deletions.labels(decision.value).inc()
        log.info("image deleted" if decision is Decision.DELETE else "image already deleted",
                 extra={"producer": principal.name, "image_id": image_id})
        return web.Response(status=204)
