"""This host: running external programs (runner), the signal policy, locks, the host's
distribution, its facts (build host, QEMU/KVM/firmware) and the requirements each verb asks of it."""
