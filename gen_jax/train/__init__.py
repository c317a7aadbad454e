"""The training engine: one train-step factory for every family, checkpoints, the loop, sharding,
XLA settings."""

from gen_jax.train.checkpoint import CheckpointError, Checkpointer, CorruptCheckpointError
from gen_jax.train.loop import (TIMING_KEYS, DivergedError, Interrupted, MetricsWriter, NonFiniteError, fit,
                              interrupt_on_signals, json_dumps, read_metrics, with_progress)
from gen_jax.train.parallel import (check_batch_size, initialize_distributed, keep_state_sharding,
                                    local_replica, make_mesh, replicate, shard_batch, shard_state)
from gen_jax.train.platform import XLA_CPU_FLAGS, configure_xla_cpu
from gen_jax.train.state import TrainState, TwoPlayerState, make_optimizer
from gen_jax.train.steps import (REPLICA_MAPS, convolves, equations, global_norm, make_train_step, make_two_player_step,
                                 map_replicas, resolve_replica_map)

__all__ = [
    "CheckpointError", "Checkpointer", "CorruptCheckpointError", "DivergedError", "Interrupted", "MetricsWriter",
    "NonFiniteError", "TIMING_KEYS", "fit", "json_dumps", "with_progress",
    "interrupt_on_signals", "read_metrics",
    "check_batch_size", "initialize_distributed", "keep_state_sharding", "local_replica", "make_mesh", "replicate", "shard_batch",
    "shard_state", "XLA_CPU_FLAGS", "configure_xla_cpu",
    "TrainState", "TwoPlayerState", "make_optimizer", "make_train_step", "make_two_player_step", "global_norm",
    "REPLICA_MAPS", "convolves", "equations", "map_replicas", "resolve_replica_map",
]
