"""The round deadline's defaults, apart from the server so that the CLI's help reads them without
importing paho, numpy or the training core (`edgecloud --help` must start fast)."""

FIRST_ROUND_DEADLINE_S = 120.0  # cold workers: first torch call, first allocation of their partitions
DEADLINE_FACTOR = 10.0          # later rounds: this many times round 1's wall time...
DEADLINE_FLOOR_S = 5.0          # ...but never less (a loaded machine, a broker hiccup)
RESEND_S = 2.0                  # a round message goes again to the workers that have not answered
JOIN_TIMEOUT_S = 600.0          # train-server waits this long for every worker's first hello
