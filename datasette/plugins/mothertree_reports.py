"""Datasette plugin: every mothertree report as a canned query on every database served.

    datasette lineage.db --plugins-dir datasette/plugins

works for a registry file of any name (``-m datasette/metadata.json`` only
matches a file called ``registry.db``; ``mothertree --db X.db report --datasette``
writes metadata for ``X.db``). Queries come from ``mothertree.registry.reports``,
the same definitions ``mothertree report`` runs.
"""

from datasette import hookimpl


@hookimpl
def canned_queries(datasette, database, actor):
    from mothertree.registry.reports import datasette_queries

    return datasette_queries()
