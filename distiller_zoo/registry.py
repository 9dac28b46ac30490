"""The registry mapping `--distill` names to method classes."""
METHODS = {}


def register(name):
    """Class decorator: make a method selectable as `--distill name`."""
    def add(cls):
        if name in METHODS:
            raise ValueError(f"method {name!r} registered twice")
        clash = [known for known in METHODS if known.lower() == name.lower()]
        if clash:  # --distill is matched case-insensitively, so names differing only in case would be ambiguous
            raise ValueError(f"method {name!r} differs from the registered {clash[0]!r} only in letter case")
        METHODS[name] = cls
        cls.name = name
        return cls
    return add


def add_argument_once(parser, *flags, **kwargs):
    """Add a flag unless another method already declared it (methods share e.g. --feat_dim)."""
    if any(flag in parser._option_string_actions for flag in flags):  # argparse has no public query
        return
    parser.add_argument(*flags, **kwargs)
