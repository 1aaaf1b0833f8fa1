"""Benchmarks: the plumbing the scripts under scripts/ share (kit), what each measures
(check, emulator, agent), process accounting (procstats), and for the fuzz script the hostile
client (hostile) and a heap inspector run inside the reflector (heapwatch). They print figures;
tests do not time anything."""
