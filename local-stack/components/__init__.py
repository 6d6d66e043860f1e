"""The components of the local stack, one module each: how each is configured, started, checked
and bootstrapped.

Each module defines its :class:`component.Component` (and any steps other components run around
it); ``stack.py`` lists them all, in start order. Nothing here imports ``stack.py``.
"""
