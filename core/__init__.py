"""binsight's core: data, image cache, models, experiment store and metrics."""
import os

# Several processes share few cores here. PyTorch's OpenMP threads busy-wait by default, and a
# busy-waiting thread that shares its core with another process made each training step 40x
# slower (5.2 s instead of 0.12 s). The runtime reads this once, when torch loads: hence here.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
