An optional C accelerator for the translator, built when a compiler is there and kept in agreement with the pure-Python code by tests.
