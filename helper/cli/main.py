"""The training scripts' one start-up: parse, check the run folder, --gids, runtime, data, models, method, train.

A teacher, a student and a teacher for a user's image folder differ only in how a command is resolved and what is
built once the data is loaded (helper.cli.teacher, helper.cli.student with helper.cli.external for own models and
images, helper.cli.folder_teacher); everything else below runs the same for the four scripts.
"""
import os
import sys
from types import MappingProxyType

from helper.cli import folder_teacher, student, teacher
from helper.cli.gids import apply_gids, parse_gids
from helper.cli.parser import resolve_seed, student_parser, teacher_parser
from helper.loaders.loader import LoaderSettings, build_loaders, load_datasets
from helper.runs.config import run_config
from helper.runs.store import prepare_run_dir
from helper.runtime.device import cleanup, seed_everything, setup_runtime, shared_seed
from helper.runtime.distributed import per_process_batch
from helper.teachers.inference import install_for_training
from helper.training.signals import Stopped
from helper.training.trainer import Trainer, TrainSettings

ROLES = {"teacher": (teacher_parser, teacher.resolve), "student": (student_parser, student.resolve),
         "folder_teacher": (folder_teacher.parser, folder_teacher.resolve)}


def main(profile, argv=None):
    """Run the training script of `profile` on `argv` (default: the command line); returns the run's summary.

    Besides run_cli the one place that exits: with torchrun's status under --gids, with 128 + the signal after a stop.
    """
    argv = sys.argv[1:] if argv is None else argv
    parser, resolve = ROLES[profile.role]
    job = resolve(profile, parser(profile).parse_args(argv))
    options = job.options
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1 and options["gids"]:  # the --gids parent: its command runs in len(ids) processes
        world = len(parse_gids(options["gids"]))
    per_process_batch(options["batch_size"], world)  # refused before anything loads
    store = prepare_run_dir(job.run_dir, job.name, run_config(options, world), resume=options["resume"],
                            save_root=options["save_root"], rank=rank)
    try:
        device, status = apply_gids(options["gids"], device=options["device"], batch_size=options["batch_size"],
                                    sync_bn=options["sync_bn"], script=profile.script, argv=argv,
                                    before_spawn=store.close)
        if status is not None:
            sys.exit(status)
        seed = resolve_seed(options["seed"], resume=store.resume, run_dir=job.run_dir)
        runtime = setup_runtime(device, options["amp"], options["channels_last"], options["deterministic"],
                                keep_host_memory=True)
        seed = shared_seed(seed, runtime)
        seed_everything(seed + runtime.rank)
        options = MappingProxyType({**options, "device": device, "resume": store.resume, "seed": seed})
        loading = loader_settings(options, job)
        train_set, val_set = job.datasets(options) if job.datasets else load_datasets(loading)
        method, network, record, check = job.build(options, len(train_set))
        batch = per_process_batch(options["batch_size"], runtime.world_size)
        train_loader, val_loader = build_loaders(train_set, val_set, loading, runtime, batch)
        install = None
        if not options["no_inference_teacher"] and hasattr(method, "inference_teacher"):
            def install(method):
                return install_for_training(method, train_set[0][0].shape, batch, runtime,
                                            compile=options["compile"], deterministic=options["deterministic"])
        trainer = Trainer(method, network, train_settings(options, job), runtime, store=store,
                          config=run_config(options, runtime.world_size), train_loader=train_loader,
                          val_loader=val_loader, record=record, install_teacher=install)
        if check is not None:
            check(trainer, runtime)
        return trainer.fit()
    except Stopped as stop:
        sys.exit(128 + stop.signum)
    finally:
        store.close()
        cleanup()


def loader_settings(options, job):
    """What the loaders need, from the resolved options and the job (the method's contrast sampling)."""
    return LoaderSettings(dataset=options["dataset"], data_root=options["data_root"], download=options["download"],
                          image_size=job.image_size, contrast=job.contrast, seed=options["seed"],
                          num_workers=options["num_workers"], official_num_workers=options["official_num_workers"],
                          gpu_data=options["gpu_data"])


def train_settings(options, job):
    """What the epoch driver needs, from the resolved options."""
    return TrainSettings(epochs=options["epochs"], batch_size=options["batch_size"],
                         learning_rate=options["learning_rate"], lr_decay=options["lr_decay"],
                         lr_decay_epochs=tuple(options["lr_decay_epochs"]), lr_decay_rate=options["lr_decay_rate"],
                         momentum=options["momentum"], weight_decay=options["weight_decay"],
                         fused_sgd=options["fused_sgd"], init_epochs=job.init_epochs, sync_bn=options["sync_bn"],
                         compile=options["compile"], print_freq=options["print_freq"],
                         save_freq=options["save_freq"], progress=options["progress"],
                         warmup_epochs=options.get("warmup_epochs", 0))  # a flag of the folder teacher's only
