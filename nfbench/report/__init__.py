"""Reports for reviewers, from tables, records and specs only (nothing here trains or scores):
``paper`` writes ``reports/<paper>.md`` from the building blocks in ``markdown`` (tables),
``context`` (what the numbers were made on), ``sections`` (questions, protocols, complexity)
and ``figures``; ``index`` writes ``reports/README.md``."""
