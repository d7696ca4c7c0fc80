"""Running a planned graph: scheduler, executors (inline, Ray), rank groups, progress."""
