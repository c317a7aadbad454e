"""Flow matching on a 2D toy distribution (ring8 by default; Lipman et al. 2022, Liu et al. 2022): the
``ddpm_toy`` MLP predicting the velocity of the linear (optimal-transport / rectified-flow) path, samples by
``eval.sample_steps`` Heun steps of the ODE; mode coverage of the samples and the held-out NLL by the ODE
(exact divergence). ``get_config('smoke')`` runs in
seconds on CPU.

    python -m experiments.train --config fm_toy --workdir runs/fm_toy
"""

from experiments.configs import ddpm_toy


def fm_objective(c, *, path: str = "linear") -> None:
    """The flow-matching fields: replace the DDPM ones."""
    ddpm_toy.drop_ddpm_fields(c)
    del c.objective["num_timesteps"]
    del c.eval["sampler"]
    for k in [k for k in c.eval if k.startswith("bound_")]:
        del c.eval[k]
    c.objective.process = "fm"
    c.objective.fm_path = path  # 'linear' (optimal transport / rectified flow) | 'vp'
    c.objective.log_snr_schedule = "cosine"  # the 'vp' path's schedule
    c.objective.log_snr_max = 10.0
    c.objective.log_snr_min = -10.0
    c.eval.ode_solver = "heun"  # 'euler' | 'heun'


def get_config(arg=None):
    c = ddpm_toy.get_config("smoke" if arg == "smoke" else None)
    fm_objective(c)
    c.eval.sample_steps = 50 if arg != "smoke" else 4
    c.eval.evaluators = ("modes", "ode_nll")
    c.eval.figures = ()
    if arg not in (None, "smoke"):
        raise ValueError(f"fm_toy: unknown config argument {arg!r}; expected 'smoke' or nothing.")
    return c
