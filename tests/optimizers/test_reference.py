"""Every configuration equals the float64 reference written from the formulas."""

import pytest
import torch

from .configs import CONFIGS
from .helpers import gradients, make_params
from .reference import initial_state, reference_step


@pytest.mark.parametrize("config", CONFIGS, ids=repr)
def test_matches_formulas_in_float64(config):
    params = make_params()
    optimizer = config.make(params)
    settings = config.settings
    thetas = [p.detach().clone() for p in params]
    states = [initial_state(theta) for theta in thetas]

    for step in range(30):
        grads = gradients(params, step)
        for param, grad in zip(params, grads):
            param.grad = grad
        optimizer.step()
        for index, grad in enumerate(grads):
            thetas[index], states[index] = reference_step(thetas[index], grad, states[index], settings)

    for index, param in enumerate(params):
        state = optimizer.state[param]
        expected = states[index]
        torch.testing.assert_close(param.detach(), thetas[index], rtol=1e-12, atol=1e-14)
        assert float(state["step"]) == expected["t"] == 30
        torch.testing.assert_close(state["exp_avg"], expected["m"], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(state["exp_avg_sq"], expected["v"], rtol=1e-12, atol=1e-14)
        if settings.get("amsgrad"):
            torch.testing.assert_close(state["max_exp_avg_sq"], expected["v_max"], rtol=1e-12, atol=1e-14)
        else:
            assert "max_exp_avg_sq" not in state
