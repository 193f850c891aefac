"""Container engines and GPU access: finding a Docker or Podman client (`engine`), the arguments
a cell's container gets (`container_args`), CDI specs and the GPU route (`cdi`), the host-wide GPU
lock (`gpu_lock`), and a base image made from the host itself (`host_base`). No runner lives here:
the runners (pinmatrix/runners/) use these, and so do the `cdi-spec` and `base-image` commands."""
