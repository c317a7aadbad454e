"""CLI: ``python -m experiments.train --config experiments/configs/<name>.py[:smoke] --workdir DIR``.

Override any config value with ``--config.<key>=<value>``; rerunning with the same workdir resumes;
``--restart`` discards the workdir's checkpoints and starts over. Multi-host: add ``--distributed``
(cluster read from the environment: TPU pods, Slurm, ...) or give ``--coordinator_address``,
``--num_processes`` and ``--process_id`` explicitly.
"""

import json
import sys

from absl import app, flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Experiment config file (path[:arg]).", lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (config, checkpoints, metrics, samples).")
flags.DEFINE_bool("restart", False, "Delete the workdir's checkpoints and start over.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host runs).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (implies --distributed).")
flags.DEFINE_integer("num_processes", None, "Number of processes (implies --distributed).")
flags.DEFINE_integer("process_id", None, "This process's index (implies --distributed).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    from experiments.run import ConfigError, train_and_evaluate
    from gen_jax.data.images import DatasetNotFoundError
    from gen_jax.train import CheckpointError, NonFiniteError, configure_xla_cpu, initialize_distributed

    configure_xla_cpu()  # before the first JAX computation
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
    f = flags.FLAGS
    try:
        if f.distributed or f.coordinator_address or f.num_processes is not None:
            initialize_distributed(f.coordinator_address, f.num_processes, f.process_id)
        result = train_and_evaluate(f.config, f.workdir, restart=f.restart)
    except (ConfigError, CheckpointError, DatasetNotFoundError, NonFiniteError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if result.interrupted:
        return 130
    print(json.dumps(result.summary, indent=2))
    return 0


if __name__ == "__main__":
    app.run(main)
