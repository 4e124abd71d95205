//! (being written) Dispatches a parsed command; PID-1 mode calls this too.
