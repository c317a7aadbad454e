"""Continuous-time diffusion on a 2D toy distribution (ring8 by default; Kingma et al. 2021, VDM): the
``ddpm_toy`` MLP denoiser, a learned log-SNR schedule, trained on the continuous-time bound (nats; a
Gaussian decoder for real data) and the probability-flow ODE's exact NLL; ancestral sampling in ``eval.sample_steps`` steps. ``get_config('smoke')``
runs in seconds on CPU.

    python -m experiments.train --config vdm_toy --workdir runs/vdm_toy
"""

from experiments.configs import ddpm_toy


def vdm_objective(c, *, schedule: str = "learned") -> None:
    """The VDM objective fields (Kingma et al. 2021 defaults): replaces the DDPM ones."""
    ddpm_toy.drop_ddpm_fields(c)
    c.objective.process = "vdm"
    c.objective.log_snr_schedule = schedule  # 'linear' | 'cosine' | 'learned'
    c.objective.log_snr_max = 13.3  # lambda(0): alpha_0^2 = 1 - 1.7e-6
    c.objective.log_snr_min = -5.0  # lambda(1): alpha_1^2 = 0.0067
    c.objective.schedule_hidden = 1024  # units of the learned schedule's monotone network
    c.objective.num_timesteps = 0  # 0: continuous time; T: the T-step bound


def get_config(arg=None):
    c = ddpm_toy.get_config("smoke" if arg == "smoke" else None)
    vdm_objective(c)
    c.eval.sampler = "ddpm"  # ancestral steps ('ddim': deterministic)
    c.eval.sample_steps = 256 if arg != "smoke" else 8
    c.eval.bound_num_times = 64 if arg != "smoke" else 4
    c.eval.figures = ("log_snr",)
    if arg not in (None, "smoke"):
        raise ValueError(f"vdm_toy: unknown config argument {arg!r}; expected 'smoke' or nothing.")
    return c
