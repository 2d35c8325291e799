"""Fine-tuning in JAX: the train state, the steps, checkpoints, the MiDaS loss, data.

One module per concern: `state` (optimizer, freezing, layer decay), `steps` (jitted / sharded train and eval
steps), `checkpoints` (orbax), `losses` (MiDaS loss and metrics; SILog and unaligned metrics for metric depth), `data`
(batches, folders of images and depth, generated scenes from `scenes`); for examples/finetune.py's runs, `runs`
(schedule, resume settings, held-out evaluation), `datasets` (a benchmark's training split through Grain) and
`benchmark` (its test split scored as `beit-depth evaluate` does), imported on their own: this package does not
import them. The names users need are re-exported here:

    from beit_flax import training
    state = training.create_train_state(model, params, optax.adamw(1e-5))
    state, metrics = training.jit_train_step(state, batch)
"""

from beit_flax.training.checkpoints import (
    CheckpointWriteError,
    checkpoint_metadata,
    latest_step,
    restore_checkpoint,
    save_checkpoint,
)
from beit_flax.training.data import Batch, check_batch
from beit_flax.training.losses import metric_depth_metrics, silog_loss
from beit_flax.training.state import (
    BACKBONE,
    LOSS_TARGETS,
    TrainState,
    backbone,
    build_optimizer,
    create_train_state,
    frozen_paths,
    layer_decay_scales,
)
from beit_flax.training.steps import eval_step, jit_eval_step, jit_train_step, loss_fn, sharded_steps, train_step

__all__ = [
    "BACKBONE",
    "LOSS_TARGETS",
    "Batch",
    "CheckpointWriteError",
    "TrainState",
    "backbone",
    "build_optimizer",
    "check_batch",
    "checkpoint_metadata",
    "create_train_state",
    "eval_step",
    "frozen_paths",
    "jit_eval_step",
    "jit_train_step",
    "latest_step",
    "layer_decay_scales",
    "loss_fn",
    "metric_depth_metrics",
    "restore_checkpoint",
    "save_checkpoint",
    "sharded_steps",
    "silog_loss",
    "train_step",
]
