"""The scheduler box: runs systems in order, times each against 1/90 s, the watchdog."""
