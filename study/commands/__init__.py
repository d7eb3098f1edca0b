"""The command layer: ``cli`` (the argument parsers) and one module per ``sigmatune`` command.

Each command module has a ``main(args)`` that ``cli`` calls with the parsed arguments. The
commands import the engine (``sigmatune.study``'s other modules) and ``dashboards``; the engine
never imports a command.
"""
