"""The command line: main.py (the three scripts' one start-up), profile.py (a script's typed profile, a resolved job),
teacher.py / student.py (resolving each kind of command), parser.py (flags, official ones included), entry.py
(one-line argparse errors, run_cli), gids.py (--gids). The only part of helper/ that imports the method registry."""
