"""The live dashboard ``chatscale run`` serves: the topology with live figures, traced messages,
knobs, faults with a delivery ledger, and the lab's and load tests' results (issue 16)."""
