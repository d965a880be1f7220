"""call-me server: a lock server for shared test environments."""
