"""Train and evaluate any family: ``python -m experiments.train --config NAME[:smoke] --workdir DIR``.

``--config`` takes a config name (``--list_configs`` lists them) or a path to a config file; override any
value with ``--config.<key>=<value>``; ``--dry_run`` checks everything (config, data, the checkpoint it
would resume from), prints the resolved config and what the run would do, and writes nothing.
Rerunning with the same workdir resumes from the newest intact checkpoint; ``--restart`` discards the
workdir's checkpoints and starts over. Multi-host: add ``--distributed`` (cluster read from the
environment: TPU pods, Slurm, ...) or give ``--coordinator_address``, ``--num_processes`` and
``--process_id`` explicitly.

Exit codes: 0 done; 2 bad input (one ``error:`` line; nothing written); 3 the run diverged; 130
interrupted (checkpoint written: rerun to resume).
"""

import json
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from experiments import cli

config_flags.DEFINE_config_file("config", None, "Experiment config: a name (see --list_configs) or a file "
                                "path, with an optional ':arg' (e.g. realnvp_toy:smoke).", lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (config, checkpoints, metrics, samples).")
flags.DEFINE_bool("restart", False, "Delete the workdir's checkpoints and start over.")
flags.DEFINE_bool("list_configs", False, "List the available configs and exit.")
flags.DEFINE_bool("dry_run", False, "Check everything, print the resolved config and what the run would do, "
                  "write nothing.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host runs).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (implies --distributed).")
flags.DEFINE_integer("num_processes", None, "Number of processes (implies --distributed).")
flags.DEFINE_integer("process_id", None, "This process's index (implies --distributed).")


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with every error as one ``error:`` line and exit code 2."""
    try:
        return flags.FLAGS(cli.prepare_argv(argv))
    except (flags.Error, cli.UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
    except Exception as e:  # noqa: BLE001 -- ml_collections reports bad override values in several types
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    sys.exit(cli.EXIT_USAGE)


def _config():
    try:
        return flags.FLAGS.config
    except OSError as e:  # ml_collections defers a config file's load errors to the first access
        raise cli.UsageError(" ".join(str(e).split())) from None


def main(argv):
    del argv
    f = flags.FLAGS
    if f.list_configs:
        print(cli.list_configs())
        return 0
    return cli.run_and_exit_code(lambda: _train(f))


def _train(f) -> int:
    from experiments.run import prepare, train_and_evaluate
    from gen_jax.train import configure_xla_cpu, initialize_distributed

    if f["config"].present == 0 or f.workdir is None:
        raise cli.UsageError("--config and --workdir are required (--list_configs lists the configs)")
    config = _config()
    configure_xla_cpu()  # before the first JAX computation
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
    if f.distributed or f.coordinator_address or f.num_processes is not None:
        initialize_distributed(f.coordinator_address, f.num_processes, f.process_id)
    if f.dry_run:
        prepared = prepare(config, f.workdir, restart=f.restart)
        print(config)
        print(prepared.describe())
        print("dry run: everything checked, nothing written")
        return 0
    result = train_and_evaluate(config, f.workdir, restart=f.restart)
    if result.interrupted:
        return cli.EXIT_INTERRUPTED
    print(json.dumps(result.summary, indent=2))
    return 0


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
