"""CLI: ``python -m experiments.train --config experiments/configs/<name>.py[:smoke] --workdir DIR``.

Override any config value with ``--config.<key>=<value>``; rerunning with the same workdir resumes;
``--restart`` discards the workdir's checkpoints and starts over.
"""

import json
import sys

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Experiment config file (path[:arg]).", lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (config, checkpoints, metrics, samples).")
flags.DEFINE_bool("restart", False, "Delete the workdir's checkpoints and start over.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    from experiments.run import ConfigError, train_and_evaluate
    from gen_jax.data.images import DatasetNotFoundError
    from gen_jax.train import CheckpointError, NonFiniteError

    try:
        result = train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir, restart=flags.FLAGS.restart)
    except (ConfigError, CheckpointError, DatasetNotFoundError, NonFiniteError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if result.interrupted:
        return 130
    print(json.dumps(result.summary, indent=2))
    return 0


if __name__ == "__main__":
    app.run(main)
