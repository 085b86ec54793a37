"""``python -m kdlab.kernels``: compile and load the fused kernels here (a compile check that needs
nvcc and ninja but no GPU), and report whether their CUDA implementations registered."""
from .build import main

raise SystemExit(main())
