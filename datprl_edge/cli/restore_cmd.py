"""Placeholder: this command is being written."""


def register(subparsers):
    pass
