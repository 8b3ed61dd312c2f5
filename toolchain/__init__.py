"""The toolchain's front door: one pipeline from a checkpoint or an integer network to every output.

- ``pipeline.py``: :func:`~toolchain.pipeline.load` (checkpoint | model | ``.intnet.npz`` -> model, graph, integer
  network, each built once, on demand);
- ``targets.py``: the export formats (``nir``, ``onnx``, ``lava``) as one registry of (suffix, write, validate);
- ``quant_options.py``: the quantiser's command-line options, one set shared by every command;
- ``export_cli.py``, ``deploy_cli.py``, ``energy_cli.py``: ``sdt-export``, ``sdt-deploy``, ``sdt-energy``.

Layering: ``toolchain`` imports ``sdt``, ``export`` and ``deploy``; none of them imports ``toolchain``.
"""
