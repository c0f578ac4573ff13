"""`attnlab-report` (tables.py): what a sweep or a set of runs found, read from their directories
(data.py), with compute columns (compute.py), statistics and significance against a reference row
(stats.py, significance.py), plots (plots.py) and the `table3` sweep beside the paper (table3.py,
paper_table3.py); and the attention maps `attnlab-translate` draws (attention_plot.py)."""
