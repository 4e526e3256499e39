"""One module per ``keyveil`` sub-command; each defines ``register(subparsers)``.

A module's ``register`` adds its parser and sets ``func`` (``args -> exit code``)
with ``parser.set_defaults(func=...)``. :mod:`keyveil.cli` discovers them.
"""
