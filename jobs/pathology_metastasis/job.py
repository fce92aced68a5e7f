"""The metastasis job (FLARE 2.9's job form): ``python jobs/pathology_metastasis/job.py`` runs it in FLARE's
simulator with the seed's recipe (one site) and prints the cross-site report.

    python jobs/pathology_metastasis/job.py --data-root /data/camelyon16 --rounds 20      # the simulator
    python jobs/pathology_metastasis/job.py --sites 2 --patch-list '/data/{site}/patches.json'
    python jobs/pathology_metastasis/job.py --env poc                                     # a POC federation
    python jobs/pathology_metastasis/job.py --export --export-dir jobs                     # this folder

The job is defined once, in Python (``metastasis.job.MetastasisRecipe`` on nvflare's job API); ``--help`` lists
every option. This folder is its export with the defaults, so ``nvflare simulator jobs/pathology_metastasis -n 1``
runs it too (``make setup`` writes the project's code into ``app/custom``; git keeps only the configuration).
"""

import sys

ARGV = sys.argv[1:]  # read first: importing nvflare's recipes strips --export and --export-dir from sys.argv

from metastasis.cli import main

if __name__ == "__main__":
    sys.exit(main(["job", *ARGV]))
