"""vmgatectl: the billing clerk's command line."""
