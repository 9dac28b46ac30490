"""The command line: parsers and official flags, typed settings built from argv, the scripts' one start-up, --gids."""
