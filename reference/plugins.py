"""Adapter discovery and dispatch (spec/adapters.md).

Adapters register under the entry-point group ``tilespec.adapters``; the
NumPy reference registers itself as the adapter ``"numpy"``. Entry points
are loaded on first use.
"""

from __future__ import annotations

import pluggy

from . import hookspecs

#: Adapters this project ships, by backend name: (distribution, where it lives).
KNOWN_ADAPTERS = {
    "torch": ("tilespec-torch", "adapters_torch/"),
    "tensorflow": ("tilespec-tf", "adapters_tf/"),
}

#: The extra of the ``tilespec`` distribution that installs each shipped adapter with its
#: framework (setup.cfg, ``[options.extras_require]``).
EXTRAS = {"torch": "torch", "tensorflow": "tensorflow"}


def install_hint(backend: str) -> str:
    """How to install the adapter of ``backend``: ``pip install "tilespec[torch]"`` for a
    shipped one (spec/adapters.md, "Discovery and errors")."""
    if backend in EXTRAS:
        return f'pip install "tilespec[{EXTRAS[backend]}]"'
    return f"install an adapter for {backend!r}"

_pm: pluggy.PluginManager | None = None


class AdapterNotInstalledError(ImportError):
    """No installed adapter implements the requested backend."""


def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, with the reference and every installed adapter."""
    global _pm
    if _pm is None:
        pm = pluggy.PluginManager(hookspecs.PROJECT)
        pm.add_hookspecs(hookspecs)
        from . import numpy_adapter
        pm.register(numpy_adapter, name="numpy")
        pm.load_setuptools_entrypoints(hookspecs.ENTRY_POINT_GROUP)
        _pm = pm
    return _pm


def adapters() -> list[dict]:
    """Info dicts of every registered adapter (the reference included), by name."""
    infos = [i for i in plugin_manager().hook.tilespec_adapter_info() if i]
    return sorted(infos, key=lambda i: i["name"])


def backends() -> list[str]:
    """Names of every registered backend."""
    return [i["name"] for i in adapters()]


def missing_adapter(backend: str, what: str) -> AdapterNotInstalledError:
    """The error for ``what`` (a call) needing the adapter of ``backend`` when it is not
    installed: names the distribution, how to install it and the installed adapters
    (spec/adapters.md, "Discovery and errors")."""
    dist = f" (distribution '{KNOWN_ADAPTERS[backend][0]}')" if backend in KNOWN_ADAPTERS else ""
    have = ", ".join(backends())
    return AdapterNotInstalledError(f"{what} needs the {backend!r} adapter{dist}, which is not "
                                    f"installed: {install_hint(backend)}. Installed adapters: "
                                    f"{have}.")


def make_loader(backend: str, dataset, options: dict):
    """Dispatch ``Dataset.<backend>(**options)`` to the adapter that implements it."""
    loader = plugin_manager().hook.tilespec_make_loader(backend=backend, dataset=dataset,
                                                        options=dict(options))
    if loader is None:
        raise missing_adapter(backend, f"Dataset.{backend}()")
    return loader


def make_indexed(backend: str, tfrecords, options: dict):
    """The ``backend`` adapter's map-style dataset."""
    ds = plugin_manager().hook.tilespec_make_indexed(backend=backend, tfrecords=tfrecords,
                                                     options=dict(options))
    if ds is None:
        raise missing_adapter(backend, f"an indexed dataset for {backend!r}")
    return ds


def ops_for(backend: str):
    """The ``backend`` adapter's image ops (see hookspecs.tilespec_ops)."""
    ops = plugin_manager().hook.tilespec_ops(backend=backend)
    if ops is None:
        raise missing_adapter(backend, f"image ops for {backend!r}")
    return ops


def train_fold(backend: str, run):
    """Dispatch one fold of ``Project.train`` to the ``backend`` adapter's trainer
    (spec/training.md, "Adapters")."""
    result = plugin_manager().hook.tilespec_train_fold(backend=backend, run=run)
    if result is None:
        raise missing_adapter(backend, f"Project.train(backend={backend!r})")
    return result


def reset() -> None:
    """Forget the plugin manager (tests; after installing an adapter at run time)."""
    global _pm
    _pm = None


__all__ = ["plugin_manager", "adapters", "backends", "make_loader", "make_indexed", "ops_for",
           "train_fold", "AdapterNotInstalledError", "KNOWN_ADAPTERS", "EXTRAS", "install_hint", "missing_adapter",
           "reset"]
