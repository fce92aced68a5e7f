"""The plain core both task packages share, with no FLARE in it (the FLARE layer is :mod:`medflare`):

* :mod:`medcore.errors`, :mod:`medcore.command`: the error policy and the command-line conventions;
* :mod:`medcore.files`: safe input (JSON, text, tensors-only checkpoints) and atomic, owned output;
* :mod:`medcore.settings`: typed recipes; :mod:`medcore.device`: device and mixed-precision choice;
* :mod:`medcore.training`: the epoch loop both models train with; :mod:`medcore.seeding`: reproducible draws;
* :mod:`medcore.progress`: logging; :mod:`medcore.threads`: input read ahead in a background thread;
* :mod:`medcore.memory`: freed memory given back to the system between differently shaped steps;
* :mod:`medcore.provenance`: what made an output, checked on reruns; :mod:`medcore.bootstrap`: confidence
  intervals;
* :mod:`medcore.standalone`: training outside FLARE: checkpoints, history and resumable runs.
"""
