One process serves several services from a TOML file (``--config``), checked with ``--check``, reloaded on SIGHUP without dropping a connection; metrics carry a ``service`` label.
