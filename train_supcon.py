"""Stage 1: contrastive pre-training with BalancedSupCon (or SupCon) from a YAML config.

python train_supcon.py --config configs/main_supcon.yaml [section.key=value ...]
python train_supcon.py --resume runs/<name>
"""

import sys

from bcl.cli import main
from bcl.config import SupConConfig
from bcl.stages import run_supcon

if __name__ == "__main__":
    sys.exit(main(SupConConfig, run_supcon, __doc__.splitlines()[0]))
