"""Deployable HTTP services. Each sub-package is one service; they share only the ``imgstream`` library."""
