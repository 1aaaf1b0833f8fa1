"""Benchmarks: the plumbing the scripts under scripts/ share (kit), what each measures
(check, emulator, agent) and process accounting (procstats). They print figures; tests do not
time anything."""
