"""The self-contained HTML report of a run folder (``vitquant report DIR``)."""
