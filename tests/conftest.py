import sys
from pathlib import Path

# the oracle and the instance generator are test helpers, importable as plain modules
sys.path.insert(0, str(Path(__file__).parent))
