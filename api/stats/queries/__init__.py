"""The stats API's queries, one module per endpoint, plus the freshness every answer carries.

Pure (no framework, no database): a handler hands the query string to a ``*Query.parse`` and the
caller's :class:`~api.stats.params.Scope`, gets back a frozen query object or a
:class:`~imgstream.domain.errors.BadRequest` naming the offending field, and asks the object for
its :class:`~api.stats.sql.Sql`. Parameters are parsed strictly (:mod:`api.stats.params`), ranges
and cursors by :mod:`api.stats.ranges`, and every statement is bound SQL over the documented views
(:mod:`api.stats.sql`).
"""
