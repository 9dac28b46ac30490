"""The registry mapping `--distill` names to method classes."""
METHODS = {}


def register(name):
    """Class decorator: make a method selectable as `--distill name`."""
    def add(cls):
        if name in METHODS:
            raise ValueError(f"method {name!r} registered twice")
        METHODS[name] = cls
        cls.name = name
        return cls
    return add


def add_argument_once(parser, *flags, **kwargs):
    """Add a flag unless another method already declared it (methods share e.g. --feat_dim)."""
    if any(flag in parser._option_string_actions for flag in flags):  # argparse has no public query
        return
    parser.add_argument(*flags, **kwargs)
