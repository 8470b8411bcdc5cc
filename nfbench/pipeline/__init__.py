"""The benchmark pipeline: from specs and params to runs, records, tables and checks.

It sits above the library (:mod:`nfbench.methods`, :mod:`nfbench.datasets`,
:mod:`nfbench.backbones`, :mod:`nfbench.feature_cache`, :mod:`nfbench.metrics`,
:mod:`nfbench.profiling`) and below the reports (:mod:`nfbench.report`) and the CLI. One
module per step: ``spec`` (benchmark specs as data), ``params`` (params.yaml as typed data),
``settings`` (the one settings resolver), ``plan`` (specs + params → runs),
``identity`` (what makes two runs the same), ``experiment`` (one run → one record),
``record`` (the record's builder, writer and readers), ``protocols`` (the originals'
evaluation protocols, measured in the same run), ``execution`` (one run's path: fit, score,
stamp, store), ``runner``, ``ray_executor`` and ``devices`` (executing many runs),
``tables`` (records → tidy tables),
``complexity`` (the profiling stage), ``check`` (the regression check), ``decision``,
``cost`` and ``results``.
"""
