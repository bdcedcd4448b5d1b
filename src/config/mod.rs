//! Configuration: the YAML model, loading (file or directory), validation with file:line:col.
//! (Built by the foundation issue.)
