"""``benchmarks/recipe_networks.py``: it builds each recipe's network and its reference as documented."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from sbnn.models import SpikingConvNet, SpikingMLP, SpikingRecurrentNet, ResidualSpikingMLP

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("recipe_networks_script", ROOT / "benchmarks" / "recipe_networks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "recipe, n_in, shape, ours, reference",
    [
        ("shd", 12, (5, 3, 12), SpikingRecurrentNet, SpikingRecurrentNet),
        ("shd_resnet", 12, (5, 3, 12), ResidualSpikingMLP, SpikingMLP),
        ("dvs_gesture_frames", 64, (5, 3, 64), SpikingConvNet, SpikingMLP),
    ],
)
def test_each_recipe_builds_its_network_and_a_feed_forward_reference(script, recipe, n_in, shape, ours, reference):
    build, build_ref = script.networks(recipe, n_in, 4)
    net, ref = build(), build_ref()
    inner = getattr(net, "network", net)
    assert type(inner) is ours and type(ref) is reference
    cfg = script.recipe_config(recipe)["model"]["init_args"]["network"]["init_args"]
    # the recipe's own settings reach both networks
    assert inner.neuron_settings.beta == cfg["neuron"]["beta"] == ref.neuron_settings.beta
    if recipe == "shd":
        assert inner.recurrent is not None and ref.recurrent is None
        assert [m.out_features for m in inner.layers] == cfg["hidden"]
    x = torch.rand(*shape).round()
    assert net(x).shape == ref(x).shape == (3, 4)


def test_a_frame_recipe_refuses_non_square_inputs(script):
    with pytest.raises(ValueError, match="square"):
        script.networks("dvs_gesture_frames", 60, 4)


def test_bad_epochs_are_refused(script):
    with pytest.raises(SystemExit):
        script.parse_args(["--epochs", "0"])
