"""A run folder → summary.{json,md,html}, junit.xml, diff, history, pins; the nightly and artifact
merge."""
