"""Stage 2 and the baselines: a classifier on a frozen (linear probe) or fine-tuned encoder.

python train_linear.py --config configs/main_linear.yaml model.stage1_checkpoint=runs/<stage-1>/checkpoints/best.pt
python train_linear.py --resume runs/<name>
"""

import sys

from bcl.cli import main
from bcl.config import LinearConfig
from bcl.stages import run_linear

if __name__ == "__main__":
    sys.exit(main(LinearConfig, run_linear, __doc__.splitlines()[0]))
