"""What can go wrong, by whose doing, and the exit code the command line gives it.

- `BadInput`: what the user gave cannot work (a model file, a prompt, a setting): exit 2, one line;
  `Unsupported`, one kind of it: a model that cannot run as hogwild workers.
- `RunFailure`: the run could not go on (llama.cpp refused a context or a batch, memory ran out):
  exit 1, one line, after everything that could be kept was saved.
- Anything else is a bug in hogwild_cpp: a traceback, so that it gets reported and fixed.
"""


class HogwildError(Exception):
    """A failure hogwild_cpp reports in one line."""

    exit_code = 1


class BadInput(HogwildError):
    """The user's input (model, prompt, settings) cannot work."""

    exit_code = 2


class Unsupported(BadInput):
    """The model cannot run as hogwild workers (the reason says why)."""


class RunFailure(HogwildError):
    """The run could not go on."""

    exit_code = 1
