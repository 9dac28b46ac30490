"""Training infrastructure shared by the scripts, one sub-package per job:

    cli/        the command line: parsers and official flags, resolved options and typed settings, the scripts' one
                start-up (main.py), --gids; the only part that imports the method registry (distiller_zoo)
    training/   the epoch driver (trainer), the train/validate steps (engine), optimizers, schedule, timing, signals
    teachers/   loading models from files and inferring their architecture, the official students' conversion, the
                published-teacher registry, the BatchNorm-folded inference copy of a teacher
    loaders/    datasets to loaders: the seeded resumable sampler, CPU loaders, device-resident data
    runs/       the run folder: lock, config.json and the resume policy, checkpoints, atomic files, results lines
    runtime/    device and AMP set-up, seeding, every collective (DDP), host memory
    deploy/     export of a trained student: fold, ONNX, cost report, verification (scripts/export_student.py)
    errors.py   UsageError and friends (leaf)          argtypes.py   argparse types: positive_int, ... (leaf)

The import rule (tests/test_import_rule.py enforces it): imports only go down this list of layers,
    cli, deploy  ->  training  ->  teachers, loaders  ->  runs  ->  runtime  ->  errors, argtypes
and never sideways between two sub-packages of one layer. distiller_zoo/ imports only the leaves (errors, argtypes)
and models/; models/ and dataset/ import nothing of helper/ or distiller_zoo/.
"""
