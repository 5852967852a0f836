import sys
from pathlib import Path

# The helpers in tests/ (reference.py) import as top-level modules, both here
# and in the MPI worker that mpiexec starts.
sys.path.insert(0, str(Path(__file__).parent))
