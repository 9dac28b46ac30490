"""Runs the teacher script on a tiny tmpfs filled to leave N pages free, for each N given; prints one JSON line each.

Started by tests/test_disk_full.py inside a private mount namespace (`unshare --mount --map-root-user`), so it may mount
tmpfs without touching the machine's mounts. Each case runs in a forked child (torch imported once, in the parent)
whose stdout and stderr go to files at the descriptor level, so that a thread's traceback would be seen too.

python tests/diskfull_worker.py MOUNT_POINT CIFAR_ROOT PAGES [PAGES ...]   (PAGES: free 4 KiB pages, or 'plenty')
"""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import train_cifar_teacher  # noqa: E402
from helper.cli.entry import run_cli  # noqa: E402

PAGE = 4096
SIZE_PAGES = 1024  # a 4 MiB file system: more than a resnet8 run writes (its two checkpoints are ~0.5 MiB each)


def fill(mount, free_pages):
    """Fill `mount` so that `free_pages` pages stay free."""
    with open(os.path.join(mount, "filler"), "wb") as handle:
        handle.write(b"\0" * (SIZE_PAGES - free_pages) * PAGE)


def used_pages(mount):
    """Pages in use on the file system at `mount`."""
    stats = os.statvfs(mount)
    return (stats.f_blocks - stats.f_bfree) * stats.f_frsize // PAGE


def run_case(mount, cifar, free):
    """Mount a fresh tmpfs, leave `free` pages, run the script in a child; its exit code, output and what it wrote."""
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE_PAGES * PAGE}", "tmpfs", mount], check=True)
    try:
        fill(mount, SIZE_PAGES if free == "plenty" else free)
        out, err = os.path.join(mount, "..", "out.txt"), os.path.join(mount, "..", "err.txt")
        argv = ["--model", "resnet8", "--data_root", cifar, "--save_root", os.path.join(mount, "save"), "--epochs",
                "1", "--batch_size", "16", "--num_workers", "0", "--seed", "1"]
        pid = os.fork()
        if pid == 0:  # the child: the script's output at the descriptor level, then its exit code
            for fd, path in ((1, out), (2, err)):
                handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(handle, fd)
            code = 0
            try:
                run_cli(train_cifar_teacher.main, argv)
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1
            except BaseException:  # noqa: BLE001 - a traceback is what the test looks for
                import traceback
                traceback.print_exc()
                code = 1
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        used = used_pages(mount) - (0 if free == "plenty" else SIZE_PAGES - free)
        return {"free": free, "code": os.waitstatus_to_exitcode(status), "stderr": open(err).read(),
                "stdout": open(out).read(), "used_by_run": used}
    finally:
        subprocess.run(["umount", mount], check=True)


def main():
    mount, cifar, *cases = sys.argv[1:]
    for case in cases:
        print(json.dumps(run_case(mount, cifar, case if case == "plenty" else int(case))), flush=True)


if __name__ == "__main__":
    main()
