"""The control plane: function definitions, validation and the in-memory registry."""
