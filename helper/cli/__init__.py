"""The command line: main.py (the training scripts' one start-up), profile.py (a script's typed profile, a resolved
job), teacher.py / student.py / folder_teacher.py (resolving each kind of command; external.py: a student command
with torchvision:/timm: models or a user's image folder), parser.py (flags, official ones included), entry.py
(one-line argparse errors, run_cli), gids.py (--gids). The only part of helper/ that imports the method registry."""
