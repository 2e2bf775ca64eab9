"""Compiled kernels of the installed ssmvl package that the Hub-shippable modeling files do not carry: a checkpoint's
remote code (the files of modeling/, copied by save_pretrained) never compiles or starts anything. Importing
``ssmvl.modeling`` registers them with ``ssm_ops`` (see ``ssm_ops.register_cpu_scan_kernel``)."""
