"""Reports for reviewers: Markdown (``reports/<paper>.md``) and figures, from tables,
records and specs only; nothing here trains or scores."""
