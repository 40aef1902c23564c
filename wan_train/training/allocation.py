"""The SLURM allocation of a run, from its own settings (wan_train.parallel.slurm), as sbatch options:

    python -m wan_train.training.allocation recipe=NAME key=value ...
    --nodes=1 --ntasks-per-node=2 --cpus-per-task=1

slurm/submit puts them before the user's own sbatch options (which win) and submits the template.
"""

import sys

from wan_train.config import compose_config
from wan_train.parallel.slurm import train_allocation


def main(argv: list[str]) -> int:
    try:
        allocation = train_allocation(compose_config(argv))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(" ".join(allocation.sbatch_options()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
