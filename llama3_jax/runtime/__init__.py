"""Running as a job: multi-process start-up, logs, signals, watchdog, bad-step guard, goodput."""
