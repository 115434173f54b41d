import os

import torch

# The test nets are tiny: one thread per process is as fast as two and does not
# oversubscribe the CPU when a test launches processes of its own.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)
