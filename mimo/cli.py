"""The `mimo` command: a small dispatcher that imports a subcommand's module only when it runs.

Keeps `mimo predict` free of TensorFlow, and turns a missing extra into a one-line hint.
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module, function, extra that provides its dependencies)
COMMANDS = {
    "export": ("mimo.export.cli", "main", "server"),
    "serve": ("mimo.serving.cli", "main", "server"),
    "predict": ("mimo.client.cli", "predict_main", None),
    "models": ("mimo.client.cli", "models_main", None),
}

USAGE = "usage: mimo {" + ",".join(COMMANDS) + "} [options]   (mimo COMMAND --help for details)"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from mimo import __version__

        print(f"mimo {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"mimo: unknown command {command!r}\n{USAGE}", file=sys.stderr)
        return 2
    module_name, function, extra = COMMANDS[command]
    try:
        # Subcommands import their heavy dependencies lazily, so a missing extra can surface
        # at import or later while the command parses its options.
        return int(getattr(importlib.import_module(module_name), function)(rest) or 0)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] != "mimo" and extra:
            print(
                f"mimo {command}: missing dependency {exc.name!r}; "
                f"install it with: pip install 'mimo-serve[{extra}]'",
                file=sys.stderr,
            )
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
