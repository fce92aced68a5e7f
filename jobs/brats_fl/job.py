"""The federated BraTS job (FLARE 2.9's job form): ``python jobs/brats_fl/job.py`` runs it in FLARE's simulator with
the seed's recipe and prints the cross-site report.

    python jobs/brats_fl/job.py --data-root /data/brats18 --rounds 20      # the simulator, two sites
    python jobs/brats_fl/job.py --env poc                                  # a POC federation on this machine
    python jobs/brats_fl/job.py --env prod --startup-kit ADMIN_KIT         # a provisioned federation
    python jobs/brats_fl/job.py --export --export-dir jobs              # this folder, as committed

The job is defined once, in Python (``brats_fl.job.BratsRecipe`` on nvflare's job API); ``--help`` lists every
option. This folder is its export with the defaults, so ``nvflare simulator jobs/brats_fl -n 2 -t 2`` runs it too
(``make setup`` writes the project's code into ``app/custom``; git keeps only the configuration).
"""

import sys

ARGV = sys.argv[1:]  # read first: importing nvflare's recipes strips --export and --export-dir from sys.argv

from brats_fl.cli import main

if __name__ == "__main__":
    sys.exit(main(["job", *ARGV]))
