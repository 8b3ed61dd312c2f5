"""export: the one intermediate graph of a trained SDT and the maps over it. ``graph`` (the IR and its op table),
``shapes`` (window arithmetic), ``from_model`` (the builder the model's blocks emit to), ``run_graph`` (float reference
executor), ``nir_writer`` / ``nir_reader`` (NIR files), ``onnx_writer`` (ONNX), ``validate`` (file <-> model checks);
see ``docs/nir_mapping.md``."""
