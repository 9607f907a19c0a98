"""The ground floor every package may use: typed errors with exit codes, reading the files users
name, the result vocabulary of checks, the package's own paths and shared defaults."""
