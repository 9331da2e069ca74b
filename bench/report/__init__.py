"""Reports: run records read into tables (``tables``), the HTML page and plots (``html``),
and comparisons between result files (``compare``)."""
