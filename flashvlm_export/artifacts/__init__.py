"""Artifact files, one concern per module.

- naming: what the files of an export are called (a graph, a split folder, a graph's external data);
- files: what a file on disk weighs and hashes to;
- staging: the `.flashvlm-tmp-*` folders writes go through, their owners, and the checks before any work;
- placement: all-or-nothing placement of a write's outputs, and one line for the OS's refusals;
- ownership: what --force may replace (only what this tool wrote: its stamps, a folder's ledger);
- sidecar: the JSON record beside an artifact;
- timing: the `NAME: what took 3.1s, saved as 'x' (1.2 GB)` lines.
"""
