"""Reports from a results folder: the paper's Tables 1-4, the comparison with its published numbers and
claims, and plots.

- ``collect``: a results folder -> one :class:`~llmc_slm.reports.collect.Run` per run, each with its float
  baseline and SLMQ_perf;
- ``tables``: Tables 1-4 in the paper's layout, as :class:`~llmc_slm.reports.render.Table` objects;
- ``render``: a table as GitHub markdown, LaTeX (booktabs) or CSV;
- ``published``: the paper's published numbers, transcribed, with the citation;
- ``compare``: our figures beside the paper's, with deltas;
- ``claims``: the paper's five claims tested on our runs;
- ``plots``: matplotlib figures (Agg backend).

The command lines are ``tools/make_tables.py``, ``tools/compare_published.py`` and ``tools/make_plots.py``.
"""
