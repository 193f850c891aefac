"""Python environments inspected from outside: what an interpreter has installed (`installed`), a
base image's packages (`base_inventory`), whether an environment is consistent (`env_check`), the
`--extra-site` layers (`site_rules`), which interpreter a Python version comes from
(`interpreters`), installed versus locked (`drift`), and the per-stack compile-cache folder the
probe keeps beside an environment (`compile_cache`). Runners and the resolver read these; none of
them starts a cell."""
