"""The batch service: Spark jobs over the upload topic and the object store (docs/batch.md).

One module per job (:mod:`batch.derivatives`, :mod:`batch.reconcile`, :mod:`batch.gc`,
:mod:`batch.reorganize`), each exposing ``build(spark, config, options)`` that runs the job and
returns its summary, plus pure transforms tested without Spark. :mod:`batch.main` is the
``spark-submit`` entry point (reads config once); :mod:`batch.submit` builds the local
``spark-submit`` command and the EMR Serverless ``StartJobRun`` request; :mod:`batch.cli` adds
``imgstream batch ...`` to the CLI.
"""
