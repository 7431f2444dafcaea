"""Beam steps of the compress-features job, one concept per module.

``fit_tables``: codec tables fitted over the whole input; ``codec``: compress / decompress
with those tables; ``split_model``: the model halves before and after the split layer;
``tables_file``: the ``tables.bin`` every stream refers to.
"""
