"""The README's library snippet runs as printed: a flow trained on the user's own arrays reaches the
data's entropy."""

import os
import re

import numpy as np

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def _snippet(marker: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", open(README).read(), re.S)
    (code,) = [b for b in blocks if b.startswith(marker)]
    return code


def test_readme_own_data_snippet_trains_a_flow(capsys):
    namespace: dict = {}
    exec(compile(_snippet("# Train a flow on your own 2-D points"), "README.md", "exec"), namespace)
    printed = capsys.readouterr().out
    nll = float(re.search(r"held-out NLL \(nats\): ([-\d.]+)", printed).group(1))
    # The data are Gaussian with covariance A^T A, A = [[1, 0.8], [0, 0.3]]: entropy 1 + log(2 pi) + log|det A|.
    entropy = 1.0 + np.log(2 * np.pi) + np.log(0.3)
    assert entropy - 0.05 < nll < entropy + 0.1, (nll, entropy)
    assert namespace["samples"].shape == (1000, 2)
    cov = np.cov(np.asarray(namespace["samples"]).T)
    np.testing.assert_allclose(cov, [[1.0, 0.8], [0.8, 0.73]], atol=0.15)
