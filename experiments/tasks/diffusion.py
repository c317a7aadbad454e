"""Diffusion models from a config: ``build(config, data) -> Experiment``.

Config fields read here (the rest is the common schema of experiments/configs/common.py):

* ``model``: ``arch`` ('mlp' | 'unet'); mlp: ``hidden``, ``num_blocks``, ``time_dim``; unet: ``ch``,
  ``ch_mult``, ``num_res_blocks``, ``attn_resolutions``, ``dropout``, ``num_heads``, ``norm_groups``,
  ``remat`` (None | 'full' | 'dots': :data:`gen_jax.nn.REMAT_POLICIES`);
  both: ``class_conditional`` (images: condition on labels; classifier-free guidance when sampling).
* ``objective``: the noise schedule ``schedule`` ('linear' | 'cosine' | 'sigmoid'),
  ``num_timesteps`` (T), ``beta_start``/``beta_end`` (linear), ``cosine_s`` (cosine); the loss
  ``parameterization`` ('eps' | 'x0' | 'v'), ``weighting`` ('simple' | 'vlb' | 'min_snr'),
  ``min_snr_gamma``, ``variance`` (reverse variance of the 'vlb' weights: 'large' | 'small'),
  ``cond_drop_prob`` (label dropout for guidance).
* ``objective.process`` 'vdm' (default 'ddpm'): continuous-time diffusion trained on its bound
  (:class:`gen_jax.diffusion.VariationalDiffusionModel`) with ``log_snr_schedule`` ('linear' | 'cosine' |
  'learned'), ``log_snr_max``, ``log_snr_min``, ``schedule_hidden`` (learned), ``num_timesteps`` (0: continuous
  time; T: the T-step bound); ``model.fourier_features`` (unet). Its samples: ``eval.sample_steps`` reverse
  steps, ``eval.sampler`` 'ddpm' (ancestral) or 'ddim' (deterministic); its bound: ``eval.bound_num_times``.
* ``objective.process`` 'fm': flow matching (:class:`gen_jax.diffusion.FlowMatchingModel`) on the ``fm_path``
  ('linear' | 'vp'; the vp path's schedule from ``log_snr_schedule``, ``log_snr_max``, ``log_snr_min``); the
  network predicts the velocity. Its samples: ``eval.sample_steps`` steps of ``eval.ode_solver`` ('euler' | 'heun').
* ``eval`` (the samples the run shows and scores): ``sampler`` ('ddpm' | 'ddim'), ``ddpm_variance``
  ('small' | 'large'), ``ddim_steps``, ``ddim_eta``, ``ddim_spacing`` ('uniform' | 'quadratic'),
  ``clip_x0`` (clip the predicted x_0 to [-1, 1]; images), ``guidance_scale`` (class-conditional models;
  None: plain conditional sampling). Samples use the EMA parameters.
"""

from __future__ import annotations

import jax

from experiments.configs.common import optim_kwargs
from experiments.tasks.base import DataSpec, Experiment, precision_policy
from gen_jax import diffusion
from gen_jax.train import TrainState, make_optimizer


def build_schedule(objective) -> diffusion.NoiseSchedule:
    """The noise schedule of ``config.objective``."""
    kind, T = objective.schedule, int(objective.num_timesteps)
    if kind == "linear":
        return diffusion.NoiseSchedule.linear(T, objective.beta_start, objective.beta_end)
    if kind == "cosine":
        return diffusion.NoiseSchedule.cosine(T, objective.get("cosine_s", 0.008))
    if kind == "sigmoid":
        return diffusion.NoiseSchedule.sigmoid(T)
    raise ValueError(f"config.objective.schedule={kind!r}; expected 'linear', 'cosine' or 'sigmoid'.")


def build_denoiser(config, data: DataSpec):
    """The denoiser of ``config.model`` for data of shape ``data.shape``."""
    m = config.model
    num_classes = None
    if m.get("class_conditional", False):
        if not data.num_classes:
            raise ValueError(f"config.model.class_conditional=True needs labelled data, got {data.name!r}.")
        num_classes = data.num_classes
    if m.arch == "mlp":
        if len(data.shape) != 1:
            raise ValueError(f"config.model.arch='mlp' needs vector data, got shape {data.shape}.")
        return diffusion.MLPDenoiser(hidden=m.hidden, num_blocks=m.num_blocks, time_dim=m.time_dim,
                                     num_classes=num_classes)
    if m.arch == "unet":
        if data.kind != "image":
            raise ValueError(f"config.model.arch='unet' needs image data, got {data.name!r}.")
        return diffusion.UNet(ch=m.ch, ch_mult=tuple(m.ch_mult), num_res_blocks=m.num_res_blocks,
                              attn_resolutions=tuple(m.attn_resolutions), dropout=m.dropout,
                              num_heads=m.get("num_heads", 1), norm_groups=m.norm_groups,
                              num_classes=num_classes, fourier_features=tuple(m.get("fourier_features", ())),
                              remat=m.get("remat", None))
    raise ValueError(f"config.model.arch={m.arch!r}; expected 'mlp' or 'unet'.")


def build(config, data: DataSpec) -> Experiment:
    obj, ev = config.objective, config.eval
    process = obj.get("process", "ddpm")
    if process != "fm" and ev.sampler not in ("ddpm", "ddim"):
        raise ValueError(f"config.eval.sampler={ev.sampler!r}; expected 'ddpm' or 'ddim'.")
    if process == "vdm":
        schedule = diffusion.make_log_snr_schedule(obj.log_snr_schedule, obj.log_snr_max, obj.log_snr_min,
                                                   obj.get("schedule_hidden", 1024))
        model = diffusion.VariationalDiffusionModel(build_denoiser(config, data), schedule, data.shape,
                                                    num_timesteps=int(obj.num_timesteps),
                                                    cond_drop_prob=obj.cond_drop_prob,
                                                    precision=precision_policy(config))
    elif process == "fm":
        model = diffusion.FlowMatchingModel(build_denoiser(config, data), data.shape, path=obj.fm_path,
                                            log_snr_schedule=obj.get("log_snr_schedule", "cosine"),
                                            log_snr_max=obj.get("log_snr_max", 10.0),
                                            log_snr_min=obj.get("log_snr_min", -10.0),
                                            cond_drop_prob=obj.cond_drop_prob, precision=precision_policy(config))
    elif process == "ddpm":
        model = diffusion.DiffusionModel(
            build_denoiser(config, data), build_schedule(obj), data.shape, parameterization=obj.parameterization,
            weighting=obj.weighting, min_snr_gamma=obj.min_snr_gamma, variance=obj.variance,
            cond_drop_prob=obj.cond_drop_prob, precision=precision_policy(config))
    else:
        raise ValueError(f"config.objective.process={process!r}; expected 'ddpm', 'vdm' or 'fm'.")

    def init_state(key: jax.Array) -> TrainState:
        init_key, state_key = jax.random.split(key)
        params, model_state = model.init(init_key)
        return TrainState.create(params=params, tx=make_optimizer(**optim_kwargs(config)), key=state_key,
                                 ema_decay=config.optim.ema_decay, model_state=model_state,
                                 loss_scale=precision_policy(config).loss_scale())

    log_density = None
    if data.kind == "toy":  # the density panel: log p(x) by the probability-flow ODE (exact divergence), on a
        # 64 x 64 grid at tolerance 1e-3: ~7 s for fm_toy (200 x 200 at 1e-4: ~3 min)
        log_density = jax.jit(lambda params, x: diffusion.ode_log_likelihood(
            model.probability_flow(params), x, rtol=1e-3, atol=1e-3)["log_prob"])
    return Experiment(model=model, init_state=init_state, log_density=log_density, density_resolution=64,
                      sample_options=sample_options(config, data))


def sample_options(config, data: DataSpec) -> dict:
    """``model.sample`` options from ``config.eval``."""
    ev = config.eval
    clip = 1.0 if (data.kind == "image" and ev.clip_x0) else None
    process = config.objective.get("process", "ddpm")
    if process == "vdm":
        return dict(num_steps=int(ev.sample_steps), deterministic=ev.sampler == "ddim", clip_x=clip)
    if process == "fm":
        return dict(num_steps=int(ev.sample_steps), solver=ev.ode_solver, clip_x=clip)
    return dict(sampler=ev.sampler, ddpm_variance=ev.ddpm_variance, ddim_steps=int(ev.ddim_steps),
                ddim_eta=float(ev.ddim_eta), ddim_spacing=ev.ddim_spacing, guidance_scale=ev.get("guidance_scale", None),
                clip_x0=clip)
