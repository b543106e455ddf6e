"""The public API imports and every exported name resolves."""

import importlib


def test_public_api_imports():
    scu_jax = importlib.import_module("scu_jax")
    assert scu_jax.__all__ and len(set(scu_jax.__all__)) == len(scu_jax.__all__)
    for name in scu_jax.__all__:
        assert getattr(scu_jax, name) is not None, name
    assert callable(scu_jax.awgn) and callable(scu_jax.scu) and callable(scu_jax.run)
    assert set(scu_jax.CHANNELS) == {"awgn", "rayleigh", "rician", "none"}


def test_subpackages_export_what_they_list():
    for module_name in ("scu_jax.models", "scu_jax.data", "scu_jax.methods", "scu_jax.engine",
                        "scu_jax.mi"):
        module = importlib.import_module(module_name)
        for name in module.__all__:
            assert hasattr(module, name), f"{module_name}.{name}"


def test_every_method_name_has_one_factory():
    from scu_jax import config
    from scu_jax.runs import unlearn

    assert tuple(unlearn.RUNNERS) == config.METHODS
