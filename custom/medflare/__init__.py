"""The generic FLARE layer both jobs share, apart from the plain core (:mod:`medcore`, which imports no nvflare):

* :mod:`medflare.learner`: :class:`~medflare.learner.EngineLearner`, a thin FLARE ``Learner`` around a plain-Python
  training engine (state on disk, local best model);
* :mod:`medflare.workflow`: :class:`~medflare.workflow.ResumableScatterAndGather`, round checkpoints and resuming;
* :mod:`medflare.recipe`: a task's job on FLARE's job API (:class:`~medflare.recipe.TaskRecipe`), exported or run
  in the simulator, a POC or a provisioned federation;
* :mod:`medflare.algorithms`: FedOpt's server optimisers and the privacy filters;
* :mod:`medflare.deploy`: a real local federation from startup kits;
* :mod:`medflare.crosssite`: the cross-site validation report;
* :mod:`medflare.bundle`: a trained model as a MONAI bundle, with its provenance and measured numbers;
* :mod:`medflare.cli`: the sub-commands both tools share (job, make-job, report, deploy).

Nothing here names a job: each task package passes what is its own (:class:`medflare.task.TaskSpec`).
"""
