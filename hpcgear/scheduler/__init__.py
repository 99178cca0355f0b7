"""Talking to schedulers: SLURM over a local or SSH transport, or the local backend.

Modules (import what you need; nothing heavy is imported here, so the CLI stays fast):

* ``runner``       -- ``CommandRunner`` protocol, ``SubprocessRunner``, ``CompletedCommand``:
                      the one wrapper that runs external commands (argv lists, timeouts,
                      scrubbed SLURM/SBATCH environment, site ``module load`` lines).
* ``transport``    -- ``Transport`` protocol, ``LocalTransport``, ``SSHTransport`` (paramiko):
                      commands plus atomic file operations (SFTP remotely).
* ``base``         -- ``SchedulerBackend`` protocol and its values: ``SchedulerStatus``,
                      ``Accounting``, ``ClusterInfo``, ``PartitionInfo``, ``PreflightResult``;
                      errors ``SubmitRejectedError`` and ``SchedulerUnavailableError``.
* ``slurm``        -- ``SlurmBackend``: sbatch/squeue/sacct/scontrol/scancel builders+parsers.
* ``slurm_tables`` -- every SLURM state and reason code in plain words (and which ones mean
                      "this job will never start").
* ``local``        -- ``LocalBackend``: runs the same sbatch script on this machine.
* ``testing``      -- ``RecordedRunner``: replays captured SLURM output in tests.
"""
