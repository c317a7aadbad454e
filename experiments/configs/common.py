"""The parts every experiment config shares. Each ``<family>_<data>.py`` config starts from
``base_config`` and adds ``model``/``objective``/``eval`` fields of its family."""

from __future__ import annotations

from ml_collections import config_dict

# (family, data kind) -> the evaluators and figures a run uses when config.eval.evaluators / figures are
# None (the default: resolved by the runner once it knows the data; experiments/evaluators,
# experiments/figures). 'frechet' on images needs labels (its feature classifier): dropped without them.
EVALUATORS = {
    ("flow", "toy"): ("nll", "modes"), ("flow", "points"): ("nll",), ("flow", "image"): ("nll",),
    ("diffusion", "toy"): ("bound", "modes", "ode_nll"), ("diffusion", "points"): ("bound", "ode_nll"),
    ("diffusion", "image"): ("bound",),
    ("vae", "toy"): ("importance_nll", "modes"), ("vae", "points"): ("importance_nll",),
    ("vae", "image"): ("importance_nll",),
    ("gan", "toy"): ("modes", "frechet"), ("gan", "points"): ("frechet",), ("gan", "image"): ("frechet",),
}
FIGURES = {
    ("flow", "toy"): ("latents",), ("flow", "points"): (), ("flow", "image"): ("temperature_grid",),
    ("diffusion", "toy"): ("ddpm_vs_ddim",), ("diffusion", "points"): (), ("diffusion", "image"): ("ddpm_vs_ddim",),
    ("vae", "toy"): ("vae_latent",), ("vae", "points"): (), ("vae", "image"): ("reconstructions",),
    ("gan", "toy"): ("gan_seeds", "gan_discriminator"), ("gan", "points"): (),
    ("gan", "image"): ("gan_interpolation", "gan_seeds"),
}


def base_config(
    family: str,
    *,
    data: str,
    batch_size: int,
    num_steps: int,
    learning_rate: float,
    seed: int = 0,
) -> config_dict.ConfigDict:
    """A config with the common schema (data / optim / train / eval)."""
    c = config_dict.ConfigDict()
    c.family = family
    c.seed = seed
    c.num_seeds = 1  # >1: train that many seeds at once, in one compiled program
    # how the seeds share that program (gen_jax.train.map_replicas): 'vmap' (batched ops), 'unroll' (the
    # one-seed step K times), 'auto' (unroll where the model convolves: XLA CPU's vmapped convs are slow)
    c.replica_map = "auto"
    c.data = config_dict.ConfigDict(dict(
        # a toy name, any prepared tfds image dataset, or the path of a .npy/.npz file or an image folder
        name=data,
        data_dir=config_dict.placeholder(str),  # tfds data_dir
        batch_size=batch_size,
        eval_batch_size=500,
        num_eval=10_000,  # toy: held-out samples; read data: test examples used (-1: all)
        train_split="train", test_split="test",  # tfds split names (any tfds split spec: 'train[:90%]')
        holdout=0.1,  # files and folders without a test split: this fraction is held out (fixed order)
        image_size=config_dict.placeholder(int),  # resize images (center square crop) to this size
        random_flip=False,  # training augmentation: horizontal flips with probability 1/2
        num_threads=2, prefetch=4,  # threads that read ahead and the batches they buffer (0: none)
        num_workers=0,  # > 0: worker processes read ahead instead (decoding that holds the GIL)
    ))
    c.optim = config_dict.ConfigDict(dict(
        optimizer="adam", learning_rate=learning_rate, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
        warmup_steps=0, schedule="constant", grad_clip=0.0, ema_decay=0.0,
    ))
    c.train = config_dict.ConfigDict(dict(
        num_steps=num_steps, log_every=100, eval_every=0, sample_every=0, checkpoint_every=1000,
        keep_checkpoints=3,
        # A run fails (exit code 3) when it diverges: max_nonfinite consecutive skipped (non-finite)
        # updates, more than max_skipped_fraction of num_steps skipped in all, or a loss whose log-window
        # mean exceeds max_loss_growth x max(|its value at the first step|, 1) (0: no loss check).
        max_nonfinite=100, max_skipped_fraction=0.05, max_loss_growth=1e4,
        shard_params=False,  # True: shard large parameters and optimizer state over the devices (FSDP)
        # the networks' compute dtype: 'float32', 'bfloat16' or 'float16' (with a dynamic loss scale; its
        # calibration skips are not counted by the divergence limits above). Params, optimizer, losses and
        # log-dets stay float32; gen_jax/precision.py
        precision="float32",
    ))
    c.eval = config_dict.ConfigDict(dict(
        num_samples=2500,  # samples per seed the sample-based evaluators score (toy data)
        # None: the family's defaults for the data (EVALUATORS / FIGURES above); a tuple of names otherwise
        evaluators=config_dict.placeholder(tuple), figures=config_dict.placeholder(tuple),
        # FID / IS / KID on the FID Inception-v3 (images; experiments/evaluators/inception.py): the weights
        # converted by `python -m gen_jax.metrics.inception`; when given, 'inception' joins the default evaluators
        inception_weights=config_dict.placeholder(str),
        inception_num_samples=50_000, inception_reference="train", inception_batch_size=200,
        inception_stats_dir=config_dict.placeholder(str),  # None: <workdir>/inception_stats
    ))
    c.model = config_dict.ConfigDict()
    c.objective = config_dict.ConfigDict()
    return c


def image_frechet_eval(c: config_dict.ConfigDict, *, num_samples: int = 10_000, smoke: bool = False) -> None:
    """The options of the 'frechet' evaluator on labelled images (experiments/evaluators/samples.py): the
    number of samples scored and the feature classifier trained on the training split."""
    c.eval.fd_num_samples = 64 if smoke else num_samples
    c.eval.classifier_steps = 5 if smoke else 1000
    c.eval.classifier_batch_size = 16 if smoke else 128
    c.eval.classifier_seed = 0
    c.eval.classifier_path = config_dict.placeholder(str)  # e.g. runs/mnist_classifier.msgpack to reuse it across runs


#: The 'ode_nll' evaluator's relative and absolute solver tolerance, for configs that do not set ``eval.ode_rtol`` /
#: ``eval.ode_atol``.
ODE_TOLERANCE = 1e-5


def ode_likelihood_eval(c: config_dict.ConfigDict, *, examples: int, batch_size: int) -> None:
    """The options of the 'ode_nll' evaluator (experiments/evaluators/likelihood.py): held-out examples and
    examples per solve; the divergence ('exact', Hutchinson's 'rademacher' or 'gaussian'; unset: exact for
    vectors, rademacher for images) and the adaptive solver's tolerances."""
    c.eval.ode_examples = examples
    c.eval.ode_batch_size = batch_size
    c.eval.ode_divergence = config_dict.placeholder(str)
    c.eval.ode_rtol = ODE_TOLERANCE
    c.eval.ode_atol = ODE_TOLERANCE


def resolve_eval(config: config_dict.ConfigDict, kind: str, num_classes: int) -> None:
    """Sets ``config.eval.evaluators`` / ``figures`` that are None to the defaults for the data's kind."""
    if config.eval.evaluators is None:
        names = EVALUATORS[config.family, kind]
        config.eval.evaluators = tuple(n for n in names if not (n == "frechet" and kind == "image" and
                                                                num_classes < 2))
        if kind == "image" and config.eval.get("inception_weights", None):
            config.eval.evaluators += ("inception",)
    if config.eval.figures is None:
        config.eval.figures = FIGURES[config.family, kind]


def shrink_for_smoke(c: config_dict.ConfigDict, *, num_steps: int = 20) -> config_dict.ConfigDict:
    """The common part of every ``smoke`` variant: a few steps, small eval, frequent checkpoints."""
    c.train.num_steps = num_steps
    c.train.log_every = max(1, num_steps // 4)
    c.train.checkpoint_every = max(1, num_steps // 2)
    c.data.num_eval = min(c.data.num_eval if c.data.num_eval > 0 else 10**9, 512)
    c.data.eval_batch_size = min(c.data.eval_batch_size, 256)
    c.eval.num_samples = min(c.eval.num_samples, 256)
    c.eval.inception_num_samples = min(c.eval.inception_num_samples, 64)
    return c


def optim_kwargs(c: config_dict.ConfigDict, optim: config_dict.ConfigDict | None = None) -> dict:
    """``make_optimizer`` keyword arguments from ``c.optim`` (or another optim block)."""
    o = (optim or c.optim).to_dict()
    o.pop("ema_decay", None)
    o["num_steps"] = c.train.num_steps
    o["grad_clip"] = o.get("grad_clip") or None
    return o
