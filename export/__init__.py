"""export: the one intermediate graph of a trained SDT (``from_model.build_graph``) and the maps over it.

``graph`` (the IR), ``run_graph`` (reference executor), ``nir_writer`` / ``nir_reader`` (NIR files); see
``docs/nir_mapping.md``.
"""
